//! One look at the endpoint before the workspace boots, so a wrong
//! `base_url`, a server that is not running or a rejected key ends the run
//! in seconds (exit 4) with what to check, instead of after the outage
//! handling gave up on a job that never had a chance.
//!
//! `GET {base_url}/models` first; where that path does not exist (some
//! servers have no `/models`), one minimal chat request with one token.
//! A slow answer is not a failure: the server is there and busy.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::failure::{error_chain, error_message, first_line};
use super::types::LlmError;

/// Added to `llm.connect_timeout` for the whole probe request: the answer
/// to `/models` is instant on every server we know.
const ANSWER_SLACK: Duration = Duration::from_secs(5);

pub(super) struct Probe<'a> {
    pub http: &'a reqwest::Client,
    pub base: &'a str,
    pub model: &'a str,
    pub key: Option<&'a str>,
    pub key_env: Option<&'a str>,
    pub key_named: &'a str,
    pub connect_timeout: Duration,
}

/// What one probe request got.
enum Seen {
    Status(StatusCode, String),
    /// Connected, but no answer in time.
    Slow,
}

impl Probe<'_> {
    pub async fn run(&self) -> Result<(), LlmError> {
        let models = format!("{}/models", self.base);
        if self.ask(self.http.get(&models), &models).await?.is_none() {
            return Ok(());
        }
        // No `/models` here (404, 405, ...): ask for one token instead.
        let chat = format!("{}/chat/completions", self.base);
        let body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
        });
        let Some((status, text)) = self.ask(self.http.post(&chat).json(&body), &chat).await? else {
            return Ok(());
        };
        let what = if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
            format!(
                "neither GET {models} nor POST {chat} exists there (HTTP {}): check llm.base_url (OpenAI-compatible servers usually serve under `/v1`)",
                status.as_u16()
            )
        } else {
            format!(
                "POST {chat} was refused (HTTP {}: {}): check llm.base_url and llm.model",
                status.as_u16(),
                first_line(&error_message(&text))
            )
        };
        Err(LlmError::Preflight {
            message: what,
            reachable: true,
        })
    }

    /// Sends one probe: `None` when that settles it (an answer, a server
    /// error or a slow answer all say the server is there), the status and
    /// body of a refusal otherwise; a rejected key is an error.
    async fn ask(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Option<(StatusCode, String)>, LlmError> {
        match self.send(req).await? {
            Seen::Slow => {
                self.slow(url);
                Ok(None)
            }
            Seen::Status(s, _) if s.is_success() || s.is_server_error() => Ok(None),
            Seen::Status(s, text) => {
                self.judge_auth(s, &text)?;
                Ok(Some((s, text)))
            }
        }
    }

    async fn send(&self, mut req: reqwest::RequestBuilder) -> Result<Seen, LlmError> {
        if let Some(k) = self.key {
            req = req.bearer_auth(k);
        }
        let resp = match req
            .timeout(self.connect_timeout + ANSWER_SLACK)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_timeout() && !e.is_connect() => return Ok(Seen::Slow),
            Err(e) => return Err(self.unreachable(&e)),
        };
        let status = resp.status();
        match resp.text().await {
            Ok(t) => Ok(Seen::Status(status, t)),
            Err(e) if e.is_timeout() => Ok(Seen::Slow),
            Err(e) => Err(self.unreachable(&e)),
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> LlmError {
        let why = if e.is_timeout() {
            format!(
                "no connection within {} (llm.connect_timeout)",
                humantime::format_duration(self.connect_timeout)
            )
        } else {
            error_chain(e)
        };
        LlmError::Preflight {
            message: format!(
                "cannot reach the LLM endpoint {}: {why}; check llm.base_url and that the server is running",
                self.base
            ),
            reachable: false,
        }
    }

    fn judge_auth(&self, status: StatusCode, text: &str) -> Result<(), LlmError> {
        if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
            return Ok(());
        }
        let check = super::endpoint::key_hint(self.key_env, self.key_named);
        Err(LlmError::Preflight {
            message: format!(
                "the LLM endpoint {} rejected the credentials (HTTP {}: {}): {check}",
                self.base,
                status.as_u16(),
                first_line(&error_message(text))
            ),
            reachable: true,
        })
    }

    fn slow(&self, url: &str) {
        tracing::warn!(
            "the LLM endpoint accepted a connection but did not answer {url} within {}; going on",
            humantime::format_duration(self.connect_timeout + ANSWER_SLACK)
        );
    }
}
