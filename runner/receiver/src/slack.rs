//! Slack interactivity payloads: the Approve and Reject buttons the Slack
//! notifier plugin (`plugins/slack-notify`) puts on an approval request.

use serde::Deserialize;

/// The `action_id` of the Approve button.
pub const APPROVE: &str = "gantry_approve";
/// The `action_id` of the Reject button.
pub const REJECT: &str = "gantry_reject";

/// One button click.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    /// The Slack user id.
    pub user: String,
    /// Approve (`true`) or reject.
    pub approve: bool,
    /// The run.
    pub run: String,
    /// The environment.
    pub environment: String,
    /// The approval token the request carried.
    pub token: String,
    /// Where to update the message, if Slack gave one.
    pub response_url: Option<String>,
}

/// The button's `value`: what the notifier put there.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ButtonValue {
    run: String,
    environment: String,
    token: String,
}

#[derive(Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
struct SlackUser {
    id: String,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    user: SlackUser,
    #[serde(default)]
    actions: Vec<Action>,
    #[serde(default)]
    response_url: Option<String>,
}

/// Parses a form-encoded interaction body. `Ok(None)`: an interaction that
/// is not one of our buttons. Errors name the field.
pub fn parse(body: &[u8]) -> Result<Option<Click>, String> {
    let payload = url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .ok_or("the form has no `payload` field")?;
    let payload: Payload = serde_json::from_str(&payload).map_err(|e| format!("payload: {e}"))?;
    if payload.kind != "block_actions" {
        return Ok(None);
    }
    let Some(action) = payload
        .actions
        .iter()
        .find(|a| a.action_id == APPROVE || a.action_id == REJECT)
    else {
        return Ok(None);
    };
    let value = action
        .value
        .as_deref()
        .ok_or("payload.actions[].value is missing")?;
    let value: ButtonValue =
        serde_json::from_str(value).map_err(|e| format!("payload.actions[].value: {e}"))?;
    Ok(Some(Click {
        user: payload.user.id,
        approve: action.action_id == APPROVE,
        run: value.run,
        environment: value.environment,
        token: value.token,
        response_url: payload.response_url,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(payload: &serde_json::Value) -> Vec<u8> {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish()
            .into_bytes()
    }

    #[test]
    fn an_approve_click_carries_run_environment_and_token() {
        let value = serde_json::json!({"run": "r1", "environment": "production", "token": "t"});
        let body = form(&serde_json::json!({
            "type": "block_actions",
            "user": {"id": "U1", "username": "bob"},
            "response_url": "https://hooks.slack.com/actions/x",
            "actions": [{"action_id": APPROVE, "value": value.to_string()}]
        }));
        let click = parse(&body).expect("parse").expect("click");
        assert!(click.approve);
        assert_eq!(
            (
                click.user.as_str(),
                click.run.as_str(),
                click.token.as_str()
            ),
            ("U1", "r1", "t")
        );
    }

    #[test]
    fn other_interactions_are_not_clicks_and_bad_ones_name_the_field() {
        let body = form(&serde_json::json!({"type": "view_submission", "user": {"id": "U1"}}));
        assert_eq!(parse(&body), Ok(None));
        let err = parse(b"text=hi").expect_err("no payload");
        assert!(err.contains("payload"), "{err}");
        let body = form(&serde_json::json!({
            "type": "block_actions", "user": {"id": "U1"},
            "actions": [{"action_id": APPROVE, "value": "{}"}]
        }));
        let err = parse(&body).expect_err("empty value");
        assert!(err.contains("actions[].value"), "{err}");
    }
}
