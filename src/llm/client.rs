//! The job's model: an HTTP endpoint or the offline script, plus the job's
//! running token totals (for budgets and the summary). Conversations do
//! not call it: each gets its own handle (`for_task`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::endpoint::EndpointReport;
use super::handle::{ModelHandle, Source, Totals};
use super::limiter::LimiterStats;
use super::openai::OpenAiClient;
use super::script::Script;
use super::types::LlmError;
use crate::manifest::{LlmSpec, Price, Provider};

/// One per job: what every conversation's handle shares.
#[derive(Debug)]
pub struct Llm {
    backend: Backend,
    price: Option<Price>,
    totals: Arc<Totals>,
}

#[derive(Debug)]
enum Backend {
    OpenAi(Arc<OpenAiClient>),
    Script,
}

/// The model side of `summary.json` (read back by `convoy report`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlmReport {
    /// Replies received.
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// In the unit of `llm.price`, when prices are given.
    pub cost: Option<f64>,
    pub retries_by_reason: BTreeMap<String, u64>,
    /// The adaptive in-flight limit: ceiling, now, lowest, cuts.
    pub limiter: Option<LimiterStats>,
    pub outages: u64,
    pub outage_s: f64,
    /// Per endpoint, with more than one (`llm.endpoints`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointReport>,
}

impl LlmReport {
    /// One line for people: retries by reason, the limiter, outages, cost;
    /// empty when there is nothing to say.
    pub fn render(&self) -> String {
        let mut parts = Vec::new();
        if !self.retries_by_reason.is_empty() {
            let r: Vec<String> = self
                .retries_by_reason
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            parts.push(format!("retries by reason: {}", r.join(", ")));
        }
        if let Some(lim) = self.limiter.filter(|lim| lim.cuts > 0) {
            parts.push(format!(
                "in-flight limit cut {} times (ceiling {}, lowest {}, end {})",
                lim.cuts, lim.ceiling, lim.lowest, lim.current
            ));
        }
        if self.outages > 0 {
            parts.push(format!(
                "{} endpoint outages ({:.1}s)",
                self.outages, self.outage_s
            ));
        }
        if let Some(cost) = self.cost {
            parts.push(format!("cost {cost:.4}"));
        }
        let mut text = match (parts.is_empty(), self.endpoints.is_empty()) {
            (true, true) => String::new(),
            (true, false) => format!("llm: {} requests\n", self.requests),
            _ => format!("llm: {} requests; {}\n", self.requests, parts.join("; ")),
        };
        for e in &self.endpoints {
            text.push_str(&format!("  {}\n", e.render()));
        }
        text
    }
}

impl Llm {
    pub fn new(spec: &LlmSpec) -> Result<Llm, LlmError> {
        let backend = match spec.provider {
            Provider::Openai => Backend::OpenAi(Arc::new(OpenAiClient::new(spec)?)),
            Provider::Script => Backend::Script,
        };
        Ok(Llm {
            backend,
            price: spec.price,
            totals: Arc::default(),
        })
    }

    /// The model for the conversation of the task whose row is `vars`:
    /// the endpoint, or the policy the row holds for the script provider.
    /// Cheap (reference counts and, for a script, the row's commands).
    pub fn for_task(&self, vars: &Map<String, Value>) -> ModelHandle {
        let source = match &self.backend {
            Backend::OpenAi(c) => Source::Endpoint(c.clone(), Arc::default()),
            Backend::Script => Source::Script(Script::from_row(vars)),
        };
        ModelHandle::new(self.totals.clone(), source)
    }

    /// Checks the `[llm]` table as `new` does, but a missing API key is a
    /// warning (returned), not an error: `convoy validate` runs where the
    /// key is not set.
    pub fn check(spec: &LlmSpec) -> Result<Option<String>, LlmError> {
        match spec.provider {
            Provider::Openai => OpenAiClient::check(spec),
            Provider::Script => Ok(None),
        }
    }

    /// One look at the endpoint before the job: unreachable, wrong path or
    /// rejected key is an error saying what to check. Nothing for `script`.
    pub async fn preflight(&self) -> Result<(), LlmError> {
        match &self.backend {
            Backend::OpenAi(c) => c.preflight().await,
            Backend::Script => Ok(()),
        }
    }

    /// Closes the idle HTTP connections, so the job ends with the file
    /// descriptors it started with (after the last conversation).
    pub fn drop_idle_connections(&self) -> Result<(), LlmError> {
        match &self.backend {
            Backend::OpenAi(c) => c.drop_idle_connections(),
            Backend::Script => Ok(()),
        }
    }

    /// Retries so far by reason (what the progress line sums up).
    pub fn retries_by_reason(&self) -> BTreeMap<String, u64> {
        match &self.backend {
            Backend::OpenAi(c) => c.retries_by_reason(),
            Backend::Script => BTreeMap::new(),
        }
    }

    /// Requests in flight to the endpoint now.
    pub fn in_flight(&self) -> u64 {
        match &self.backend {
            Backend::OpenAi(c) => c.in_flight() as u64,
            Backend::Script => 0,
        }
    }

    /// The most requests in flight since the last call (for the monitor).
    pub fn take_in_flight_peak(&self) -> u64 {
        match &self.backend {
            Backend::OpenAi(c) => c.take_in_flight_peak() as u64,
            Backend::Script => 0,
        }
    }

    /// The ceiling of the in-flight limit (`llm.max_in_flight`; 0 for the
    /// script provider): the most connections the HTTP pool can need.
    pub fn in_flight_ceiling(&self) -> u64 {
        match &self.backend {
            Backend::OpenAi(c) => c.ceiling() as u64,
            Backend::Script => 0,
        }
    }

    /// Requests allowed in flight now (0 for the script provider).
    pub fn limit(&self) -> u64 {
        match &self.backend {
            Backend::OpenAi(c) => c.limit() as u64,
            Backend::Script => 0,
        }
    }

    /// Per endpoint, requests in flight now and its limit (for the
    /// monitor's `llm_in_flight_N` and `llm_limit_N`); empty with one.
    pub fn endpoint_load(&self) -> Vec<(usize, usize)> {
        match &self.backend {
            Backend::OpenAi(c) => c.endpoint_load(),
            Backend::Script => Vec::new(),
        }
    }

    /// Waits while no endpoint is up; an error once the job gave up.
    pub async fn wait_up(&self) -> Result<(), LlmError> {
        match &self.backend {
            Backend::OpenAi(c) => c.wait_up().await,
            Backend::Script => Ok(()),
        }
    }

    /// Tokens used by the whole job so far (prompt, completion).
    pub fn tokens_used(&self) -> (u64, u64) {
        self.totals.tokens()
    }

    pub fn price(&self) -> Option<Price> {
        self.price
    }

    pub fn report(&self) -> LlmReport {
        let (prompt, completion) = self.tokens_used();
        let (limiter, retries_by_reason, (outages, outage_s), endpoints) = match &self.backend {
            Backend::OpenAi(c) => (
                Some(c.limiter_stats()),
                c.retries_by_reason(),
                c.outages(),
                c.endpoint_reports(),
            ),
            Backend::Script => (None, BTreeMap::new(), (0, 0.0), Vec::new()),
        };
        LlmReport {
            requests: self.totals.requests(),
            prompt_tokens: prompt,
            completion_tokens: completion,
            cost: self.price.map(|p| p.cost(prompt, completion)),
            retries_by_reason,
            limiter,
            outages,
            outage_s,
            endpoints,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().expect("a JSON object").clone()
    }

    /// The first tool call of a reply: (name, arguments).
    fn call(reply: &crate::llm::ChatReply) -> (String, String) {
        let f = &reply.message["tool_calls"][0]["function"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        (text(&f["name"]), text(&f["arguments"]))
    }

    #[tokio::test]
    async fn each_conversation_plays_its_own_row_and_the_job_counts_every_reply() {
        let spec: LlmSpec = toml::from_str("provider = \"script\"").expect("a spec");
        let llm = Llm::new(&spec).expect("the script provider");
        let a = llm.for_task(&row(json!({"commands": ["ls"], "answer": "A"})));
        let b = llm.for_task(&row(json!({"answer": "B"})));
        let prompt = [json!({"role": "user", "content": "go"})];
        // A handle outlives the borrow of the job's `Llm`, as a spawned
        // conversation needs.
        let sent = prompt.clone();
        let a = tokio::spawn(async move { a.complete(&sent, &json!([])).await })
            .await
            .expect("no panic")
            .expect("a reply");
        let b = b.complete(&prompt, &json!([])).await.expect("a reply");
        assert_eq!(call(&a), ("bash".into(), r#"{"command":"ls"}"#.into()));
        assert_eq!(call(&b), ("finish".into(), r#"{"message":"B"}"#.into()));
        assert_eq!(llm.report().requests, 2);

        // A row the check before the job refuses fails its first request,
        // saying why; building the handle does not.
        let bad = llm.for_task(&row(json!({"commands": [1], "answer": "x"})));
        let err = bad.complete(&prompt, &json!([])).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("`commands` to be a list of strings"),
            "{err}"
        );
    }
}
