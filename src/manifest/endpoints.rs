//! `llm.endpoints`: several model servers behind one job. `llm.base_url`
//! stays valid and is one endpoint; the client works on the resolved list
//! either way (`LlmSpec::endpoints`).

use serde::{Deserialize, Serialize};

use super::schema::{LlmSpec, Manifest, Provider};

/// One model server, as written in `llm.endpoints`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Endpoint root, e.g. `http://gpu-a:8000/v1`.
    pub base_url: String,
    /// The model name this server knows; default `llm.model`.
    #[serde(default)]
    pub model: Option<String>,
    /// The variable holding this server's key; default `llm.api_key_env`.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Ceiling of this server's own adaptive in-flight limit; default
    /// `llm.max_in_flight` (which stays the job-wide ceiling).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Share of new conversations relative to the other primaries.
    #[serde(default = "EndpointSpec::default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub role: Role,
}

impl EndpointSpec {
    fn default_weight() -> u32 {
        1
    }
}

/// `primary` endpoints share the traffic; `fallback` ones get it only
/// while every primary is down.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Primary,
    Fallback,
}

/// One endpoint with the job's defaults filled in: what the client uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub base_url: String,
    pub model: String,
    pub api_key_env: Option<String>,
    /// The manifest key that names (or would name) the key's variable,
    /// for messages: `llm.api_key_env` or `llm.endpoints[i].api_key_env`.
    pub key_named: String,
    pub max_in_flight: u32,
    pub weight: u32,
    pub role: Role,
}

impl LlmSpec {
    /// The job's endpoints: `llm.endpoints`, or the one `llm.base_url`
    /// names; defaults from `[llm]` filled in. Empty for a manifest that
    /// validation refuses (no URL).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let model = self.model.clone().unwrap_or_default();
        if self.endpoints.is_empty() {
            return self
                .base_url
                .iter()
                .map(|url| Endpoint {
                    base_url: url.trim_end_matches('/').to_string(),
                    model: model.clone(),
                    api_key_env: self.api_key_env.clone(),
                    key_named: "llm.api_key_env".into(),
                    max_in_flight: self.max_in_flight,
                    weight: 1,
                    role: Role::Primary,
                })
                .collect();
        }
        self.endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| Endpoint {
                base_url: e.base_url.trim_end_matches('/').to_string(),
                model: e.model.clone().unwrap_or_else(|| model.clone()),
                api_key_env: e.api_key_env.clone().or_else(|| self.api_key_env.clone()),
                key_named: if e.api_key_env.is_none() && self.api_key_env.is_some() {
                    "llm.api_key_env".into()
                } else {
                    format!("llm.endpoints[{i}].api_key_env")
                },
                max_in_flight: e.max_in_flight.unwrap_or(self.max_in_flight),
                weight: e.weight,
                role: e.role,
            })
            .collect()
    }

    /// The model names requests go out with, one per endpoint, in order:
    /// what the fingerprint covers (not the URLs, so a job moved to other
    /// replicas of the same model resumes).
    pub fn model_names(&self) -> Vec<String> {
        self.endpoints().into_iter().map(|e| e.model).collect()
    }
}

fn is_url(u: &str) -> bool {
    u.starts_with("http://") || u.starts_with("https://")
}

/// Reports through `check(ok, key, message)` each rule `llm.base_url`,
/// `llm.model` and `llm.endpoints` break.
pub(super) fn check_endpoints(m: &Manifest, check: &mut impl FnMut(bool, &str, &str)) {
    let l = &m.llm;
    if l.provider == Provider::Script {
        check(
            l.endpoints.is_empty(),
            "llm.endpoints",
            "is for provider \"openai\" (the script provider needs no server)",
        );
        return;
    }
    if l.endpoints.is_empty() {
        check(
            l.base_url.as_deref().is_some_and(is_url),
            "llm.base_url",
            "an http:// or https:// URL is required for provider \"openai\" (or llm.endpoints, a list of servers)",
        );
        check(
            l.model.as_deref().is_some_and(|s| !s.is_empty()),
            "llm.model",
            "is required for provider \"openai\"",
        );
        return;
    }
    check(
        l.base_url.is_none(),
        "llm.base_url",
        "give llm.base_url (one server) or llm.endpoints (several), not both",
    );
    let key = "llm.endpoints";
    for (i, e) in l.endpoints.iter().enumerate() {
        let at = |what: &str| format!("entry {} ({}): {what}", i + 1, e.base_url);
        check(
            is_url(&e.base_url),
            key,
            &at("base_url must be an http:// or https:// URL"),
        );
        let named = e.model.as_deref().or(l.model.as_deref());
        check(
            named.is_some_and(|s| !s.is_empty()),
            key,
            &at("needs a model: its own `model` or llm.model"),
        );
        check(
            e.max_in_flight.is_none_or(|n| n >= 1),
            key,
            &at("max_in_flight must be at least 1"),
        );
        check(e.weight >= 1, key, &at("weight must be at least 1"));
        let same =
            |o: &EndpointSpec| o.base_url.trim_end_matches('/') == e.base_url.trim_end_matches('/');
        check(
            !l.endpoints[..i].iter().any(same),
            key,
            &at("is listed twice (give it a weight instead)"),
        );
    }
    check(
        l.endpoints.iter().any(|e| e.role == Role::Primary),
        key,
        "needs at least one endpoint with role \"primary\" (fallbacks only take over while every primary is down)",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tail: &str) -> LlmSpec {
        toml::from_str(tail).expect("an [llm] table")
    }

    #[test]
    fn base_url_is_one_endpoint_with_the_jobs_defaults() {
        let l = spec(
            "base_url = \"http://a:1/v1/\"\nmodel = \"m\"\napi_key_env = \"K\"\nmax_in_flight = 9",
        );
        assert_eq!(
            l.endpoints(),
            [Endpoint {
                base_url: "http://a:1/v1".into(),
                model: "m".into(),
                api_key_env: Some("K".into()),
                key_named: "llm.api_key_env".into(),
                max_in_flight: 9,
                weight: 1,
                role: Role::Primary,
            }]
        );
    }

    #[test]
    fn each_endpoint_takes_what_it_does_not_set_from_llm() {
        let l = spec(
            "model = \"m\"\napi_key_env = \"K\"\nmax_in_flight = 9\nendpoints = [\n  { base_url = \"http://a:1/v1\" },\n  { base_url = \"http://b:1/v1\", max_in_flight = 4, weight = 2 },\n  { base_url = \"https://c/v1\", api_key_env = \"H\", model = \"hosted\", role = \"fallback\" },\n]",
        );
        let e = l.endpoints();
        assert_eq!(
            e.iter().map(|e| e.model.as_str()).collect::<Vec<_>>(),
            ["m", "m", "hosted"]
        );
        assert_eq!(
            e.iter().map(|e| e.max_in_flight).collect::<Vec<_>>(),
            [9, 4, 9]
        );
        assert_eq!(e[1].weight, 2);
        assert_eq!(e[2].api_key_env.as_deref(), Some("H"));
        assert_eq!(e[0].api_key_env.as_deref(), Some("K"));
        assert_eq!(e[0].key_named, "llm.api_key_env");
        assert_eq!(e[2].key_named, "llm.endpoints[2].api_key_env");
        assert_eq!(e[2].role, Role::Fallback);
        assert_eq!(l.model_names(), ["m", "m", "hosted"]);
    }
}
