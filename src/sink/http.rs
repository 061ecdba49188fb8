//! The InfluxDB HTTP API as the sink uses it: `/write` (1.x, and the 1.x-compatible endpoint of
//! 2.x/3.x) and `/query` (CREATE DATABASE, SHOW FIELD KEYS). Blocking (ureq): the sender thread
//! does one request at a time, which is all the batching design needs.

use super::config::SinkConfig;
use super::line_protocol::{FieldType, Precision};
use std::io::Write;

fn base64_encode(input: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(input)
}
use std::time::Duration;

/// What one write request came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    /// 2xx: every point stored.
    Written,
    /// 400/422: InfluxDB refused some or all points; resending cannot help (and, for a partial
    /// write, would rewrite the points already stored). `body` names what was refused.
    Rejected { status: u16, body: String },
    /// 413: the batch is larger than the server's max body size.
    TooLarge,
    /// Network error, timeout, 5xx, 429, or 401/403/404 (credentials or database may be fixed
    /// on the server side): try again later.
    Retry { reason: String, loud: bool },
}

/// (measurement, field, type) of a field InfluxDB already has.
pub type FieldFact = (String, String, FieldType);

pub struct InfluxClient {
    agent: ureq::Agent,
    base: String,
    database: String,
    retention_policy: String,
    precision: Precision,
    authorization: Option<String>,
    gzip: bool,
}

/// Quote an InfluxQL identifier.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The `error` text of an InfluxDB JSON error body, or the body itself.
pub fn error_text(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

impl InfluxClient {
    pub fn new(config: &SinkConfig) -> InfluxClient {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(config.timeout_secs)))
            .user_agent(concat!("mqflux/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let authorization = if !config.token.is_empty() {
            // InfluxDB 2.x/3.x: the 1.x-compatible /write takes the API token this way.
            Some(format!("Token {}", config.token))
        } else if !config.username.is_empty() {
            Some(format!(
                "Basic {}",
                base64_encode(format!("{}:{}", config.username, config.password).as_bytes())
            ))
        } else {
            None
        };
        InfluxClient {
            agent,
            base: config.url.trim_end_matches('/').to_string(),
            database: config.database.clone(),
            retention_policy: config.retention_policy.clone(),
            precision: config.precision,
            authorization,
            gzip: config.gzip,
        }
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// POST one batch of line protocol to /write.
    pub fn write(&self, lines: &[u8]) -> WriteResult {
        let mut req = self
            .agent
            .post(format!("{}/write", self.base))
            .query("db", &self.database)
            .query("precision", self.precision.as_str())
            .header("Content-Type", "text/plain; charset=utf-8");
        if !self.retention_policy.is_empty() {
            req = req.query("rp", &self.retention_policy);
        }
        if let Some(auth) = &self.authorization {
            req = req.header("Authorization", auth);
        }
        let sent = if self.gzip {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(lines.len() / 4),
                flate2::Compression::fast(),
            );
            match enc.write_all(lines).and_then(|_| enc.finish()) {
                Ok(body) => req.header("Content-Encoding", "gzip").send(&body[..]),
                Err(e) => {
                    return WriteResult::Retry {
                        reason: format!("gzip: {e}"),
                        loud: true,
                    }
                }
            }
        } else {
            req.send(lines)
        };
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return WriteResult::Retry {
                    reason: format!("{}: {e}", self.base),
                    loud: false,
                }
            }
        };
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return WriteResult::Written;
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        match status {
            400 | 422 => WriteResult::Rejected { status, body },
            413 => WriteResult::TooLarge,
            401 | 403 => WriteResult::Retry {
                reason: format!(
                    "HTTP {status} from {}/write: check sink.username/password or sink.token: {}",
                    self.base,
                    error_text(&body)
                ),
                loud: true,
            },
            404 => WriteResult::Retry {
                reason: format!(
                    "HTTP 404 from {}/write: database {:?} (or retention policy / bucket mapping) missing: {}",
                    self.base,
                    self.database,
                    error_text(&body)
                ),
                loud: true,
            },
            _ => WriteResult::Retry { reason: format!("HTTP {status} from {}/write: {}", self.base, error_text(&body)), loud: false },
        }
    }

    /// Run an InfluxQL statement. Ok(body) on 200, Err((retryable, message)) otherwise.
    fn query(&self, q: &str, with_db: bool) -> Result<String, (bool, String)> {
        let mut req = self.agent.post(format!("{}/query", self.base));
        if with_db {
            req = req.query("db", &self.database);
        }
        if let Some(auth) = &self.authorization {
            req = req.header("Authorization", auth);
        }
        let mut resp = req
            .send_form([("q", q)])
            .map_err(|e| (true, format!("{}: {e}", self.base)))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        if status == 200 {
            Ok(body)
        } else {
            Err((
                status >= 500,
                format!("HTTP {status}: {}", error_text(&body)),
            ))
        }
    }

    /// Run a read-only InfluxQL query (`SELECT ...`) against the database, times as Unix
    /// seconds: the JSON body, or why not.
    pub fn select(&self, q: &str) -> Result<String, String> {
        let mut req = self
            .agent
            .get(format!("{}/query", self.base))
            .query("db", &self.database)
            .query("epoch", "s")
            .query("q", q);
        if let Some(auth) = &self.authorization {
            req = req.header("Authorization", auth);
        }
        let mut resp = req.call().map_err(|e| format!("{}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        if status == 200 {
            Ok(body)
        } else {
            Err(format!("HTTP {status}: {}", error_text(&body)))
        }
    }

    /// `CREATE DATABASE` (a no-op when it exists). Err(true, _) when worth trying again later.
    pub fn create_database(&self) -> Result<(), (bool, String)> {
        let body = self.query(
            &format!("CREATE DATABASE {}", quote_ident(&self.database)),
            false,
        )?;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        match v["results"][0]["error"].as_str() {
            Some(e) => Err((false, e.to_string())),
            None => Ok(()),
        }
    }

    /// Field types the database already has. Err(true, _) when
    /// InfluxDB could not be reached or failed (worth trying again later).
    pub fn field_types(&self) -> Result<Vec<FieldFact>, (bool, String)> {
        let body = self.query("SHOW FIELD KEYS", true)?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| (false, e.to_string()))?;
        let mut out = Vec::new();
        for series in v["results"][0]["series"].as_array().into_iter().flatten() {
            let Some(m) = series["name"].as_str() else {
                continue;
            };
            for row in series["values"].as_array().into_iter().flatten() {
                if let (Some(f), Some(t)) = (
                    row[0].as_str(),
                    row[1].as_str().and_then(FieldType::from_influx_name),
                ) {
                    out.push((m.to_string(), f.to_string(), t));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident(r#"my "db"\x"#), r#""my \"db\"\\x""#);
    }

    #[test]
    fn error_text_reads_json_error() {
        assert_eq!(
            error_text(r#"{"error":"partial write: x dropped=1"}"#),
            "partial write: x dropped=1"
        );
        assert_eq!(error_text("plain\n"), "plain");
    }
}
