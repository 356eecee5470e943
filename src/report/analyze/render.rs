//! The report as a person reads it in a terminal.

use serde_json::Value;

use super::model::{Report, RunState};

impl Report {
    /// The report as a person reads it in a terminal.
    pub fn render(&self) -> String {
        let mut s = format!("run: {} ({})\n", self.name, self.dir.display());
        let since = self
            .started_at
            .as_deref()
            .map_or_else(String::new, |t| format!(", started {t}"));
        s.push_str(&match self.state {
            RunState::Running => format!(
                "state: running (pid {}{since})\n",
                self.pid.as_deref().unwrap_or("unknown")
            ),
            RunState::Finished => format!("state: finished{since}\n"),
            RunState::Stopped => format!("state: stopped before its end{since}\n"),
        });
        let total = self
            .total_tasks
            .map_or_else(|| "of an unknown total".to_string(), |t| format!("of {t}"));
        s.push_str(&format!(
            "tasks finished: {} {} ({} result lines)",
            self.finished, total, self.result_lines
        ));
        if self.state == RunState::Running {
            s.push_str(&format!("; in flight: {}", self.in_flight));
        }
        s.push('\n');
        if !self.counts.is_empty() {
            let counts: Vec<String> = self
                .counts
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            s.push_str(&format!("by status: {}\n", counts.join(", ")));
        }
        if !self.failure_reasons.is_empty() {
            s.push_str("top failure reasons:\n");
            for f in &self.failure_reasons {
                s.push_str(&format!(
                    "  {:>6}  {}  (e.g. {})\n",
                    f.count, f.reason, f.example_id
                ));
            }
        }
        if !self.quarantined.is_empty() {
            s.push_str(&format!(
                "brought the workspace down (not run again): {}\n",
                self.quarantined.join(", ")
            ));
        }
        let t = &self.tokens;
        s.push_str(&format!(
            "tokens: {} prompt, {} completion, {} total; per task {:.0} prompt, {:.0} completion, {:.0} total\n",
            t.prompt, t.completion, t.total, t.mean_prompt, t.mean_completion, t.mean_total
        ));
        s.push_str(&format!("LLM retries: {}", self.retries));
        if let Some(n) = self.invalid_tool_calls {
            s.push_str(&format!("; invalid tool calls: {n}"));
        }
        s.push('\n');
        if let Some(p) = &self.steps {
            s.push_str(&format!(
                "steps: p50 {}, p90 {}, p99 {}, max {}\n",
                p.p50, p.p90, p.p99, p.max
            ));
        }
        if let Some(p) = &self.duration_s {
            s.push_str(&format!(
                "duration (s): p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}\n",
                p.p50, p.p90, p.p99, p.max
            ));
        }
        if let Some(p) = &self.phases {
            s.push_str(&p.render());
        }
        if let Some(r) = &self.rewards {
            s.push_str(&r.render());
        }
        if let Some(d) = self.run_duration_s {
            s.push_str(&format!("last run's wall time: {:.1}s\n", d));
        }
        if let Some(llm) = self
            .llm
            .clone()
            .and_then(|v| serde_json::from_value::<crate::llm::LlmReport>(v).ok())
        {
            s.push_str(&llm.render());
        }
        for c in self
            .containers
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let n = |k: &str| {
                c.get(k)
                    .and_then(Value::as_u64)
                    .map_or("-".into(), |v| v.to_string())
            };
            s.push_str(&format!(
                "container {}: sessions peak {} end {}, processes peak {} end {}\n",
                n("index"),
                n("sessions_peak"),
                n("sessions_end"),
                n("processes_peak"),
                n("processes_end")
            ));
        }
        s.push_str(&format!("leaks: {}\n", self.leaks.verdict));
        for reason in &self.leaks.why {
            s.push_str(&format!("  not checked: {reason}\n"));
        }
        for f in &self.leaks.findings {
            s.push_str(&format!("  {} at {:.0}s: {}\n", f.rule, f.at_s, f.detail));
        }
        if !self.leaks.stray_sessions.is_empty() {
            s.push_str(&format!(
                "  sessions left open: {}\n",
                self.leaks.stray_sessions.join(", ")
            ));
        }
        if !self.leaks.stray_processes.is_empty() {
            let procs: Vec<String> = self
                .leaks
                .stray_processes
                .iter()
                .map(Value::to_string)
                .collect();
            s.push_str(&format!("  processes left running: {}\n", procs.join(", ")));
        }
        if self.state != RunState::Running && self.in_flight > 0 {
            s.push_str(&format!(
                "in flight when the run stopped (partial trajectories kept): {}\n",
                self.in_flight
            ));
        }
        if self.torn_lines_ignored > 0 {
            let at: Vec<String> = self
                .torn_lines
                .iter()
                .map(|t| format!("{} line {}", t.file, t.line))
                .collect();
            s.push_str(&format!(
                "torn lines ignored: {} ({})\n",
                self.torn_lines_ignored,
                at.join(", ")
            ));
        }
        if let Some(why) = &self.stopped_because {
            s.push_str(&format!("stopped: {why}\n"));
        }
        if let Some(code) = self.exit_code {
            s.push_str(&format!("exit code: {code}\n"));
        }
        s
    }
}
