//! Webhook signatures, checked on the raw body with constant-time
//! comparisons.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a Slack request's timestamp may be from our clock.
pub const SLACK_WINDOW_SECS: i64 = 300;

/// Why a signature was refused; the text names the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key"))
}

/// Checks GitHub's `X-Hub-Signature-256: sha256=<hex>` over `body`.
pub fn verify_github(secret: &[u8], header: Option<&str>, body: &[u8]) -> Result<(), Refused> {
    let header = header.ok_or_else(|| Refused("X-Hub-Signature-256 is missing".into()))?;
    let hex_sig = header.strip_prefix("sha256=").ok_or_else(|| {
        Refused("X-Hub-Signature-256 must start with `sha256=` (sha1 is not accepted)".into())
    })?;
    let sig = hex::decode(hex_sig)
        .map_err(|_| Refused("X-Hub-Signature-256 is not hex after `sha256=`".into()))?;
    let mut mac = mac(secret);
    mac.update(body);
    mac.verify_slice(&sig)
        .map_err(|_| Refused("X-Hub-Signature-256 does not match the body".into()))
}

/// Checks Slack's `X-Slack-Signature: v0=<hex>` over
/// `v0:{X-Slack-Request-Timestamp}:{body}`, and that the timestamp is within
/// [`SLACK_WINDOW_SECS`] of `now_secs` either way. Returns the request's
/// timestamp.
pub fn verify_slack(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<i64, Refused> {
    let timestamp =
        timestamp.ok_or_else(|| Refused("X-Slack-Request-Timestamp is missing".into()))?;
    let signature = signature.ok_or_else(|| Refused("X-Slack-Signature is missing".into()))?;
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| Refused("X-Slack-Request-Timestamp is not a number".into()))?;
    if (now_secs - ts).abs() > SLACK_WINDOW_SECS {
        return Err(Refused(format!(
            "X-Slack-Request-Timestamp is {}s from now; at most {SLACK_WINDOW_SECS}s is accepted",
            now_secs - ts
        )));
    }
    let hex_sig = signature
        .strip_prefix("v0=")
        .ok_or_else(|| Refused("X-Slack-Signature must start with `v0=`".into()))?;
    let sig = hex::decode(hex_sig).map_err(|_| Refused("X-Slack-Signature is not hex".into()))?;
    let mut mac = mac(secret);
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&sig)
        .map_err(|_| Refused("X-Slack-Signature does not match the body".into()))?;
    Ok(ts)
}

/// `sha256=<hex>` for `body`: what GitHub sends (for tests and tools).
pub fn sign_github(secret: &[u8], body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `v0=<hex>` for `body` at `timestamp`: what Slack sends.
pub fn sign_slack(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in GitHub's "Validating webhook deliveries".
    #[test]
    fn github_documented_vector() {
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign_github(secret, body), expected);
        assert_eq!(verify_github(secret, Some(expected), body), Ok(()));
        assert!(verify_github(secret, Some(expected), b"Hello, World?").is_err());
    }

    /// The example in Slack's "Verifying requests from Slack".
    #[test]
    fn slack_documented_example() {
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let ts = "1531420618";
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(sign_slack(secret, ts, body.as_bytes()), expected);
        let at = 1531420618 + 10;
        assert_eq!(
            verify_slack(secret, Some(ts), Some(expected), body.as_bytes(), at),
            Ok(1531420618)
        );
        // The same request long after: refused for its age alone.
        let late = verify_slack(secret, Some(ts), Some(expected), body.as_bytes(), at + 3600);
        assert!(late.is_err_and(|e| e.0.contains("Timestamp")));
    }
}
