//! Server discovery: what `/version` and `/v1/models` say, each optional,
//! read once before a run (the model to ask for, and what `run.json` records).

use serde::Serialize;
use std::time::Duration;

/// What the server says about itself, when it answers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerInfo {
    pub version: Option<serde_json::Value>,
    pub models: Option<serde_json::Value>,
    /// Why `/v1/models` could not be read.
    #[serde(skip)]
    pub models_error: Option<String>,
}

impl ServerInfo {
    /// Reads `/version` and `/v1/models` (each optional).
    pub async fn discover(http: &reqwest::Client, base_url: &str) -> Self {
        let get = |path: &str| {
            let url = format!("{base_url}{path}");
            async move {
                let response = http
                    .get(&url)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {}", crate::client::error_chain(&e)))?;
                if !response.status().is_success() {
                    return Err(format!("GET {url}: HTTP {}", response.status().as_u16()));
                }
                response
                    .json::<serde_json::Value>()
                    .await
                    .map_err(|e| format!("GET {url}: not JSON: {e}"))
            }
        };
        let (version, models) = tokio::join!(get("/version"), get("/v1/models"));
        let (models, models_error) = match models {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e)),
        };
        Self {
            version: version.ok(),
            models,
            models_error,
        }
    }

    /// The first model `/v1/models` lists.
    pub fn first_model(&self) -> Option<String> {
        self.models
            .as_ref()?
            .pointer("/data/0/id")?
            .as_str()
            .map(str::to_string)
    }
}
