//! Notifier: posts to Slack through the host's allow-listed HTTP.
//!
//! An approval request becomes a Block Kit message with the evidence so far
//! and Approve / Reject buttons (the receiver's
//! `/webhooks/slack/interactions` takes the clicks); the outcomes
//! (succeeded, failed, rolled back) become one-line messages.
//!
//! `with:`
//! - `channel`: the channel id, for `chat.postMessage` with a bot token;
//! - `token_secret`: the secret holding the bot token (default
//!   `SLACK_BOT_TOKEN`; grant it in the manifest for the environment);
//! - `api_url`: default `https://slack.com/api/chat.postMessage`;
//! - `webhook_url`: post to this incoming webhook instead (no token).

use gantry_sdk::StepContext;
use gantry_sdk::http;
use gantry_sdk::notifier::{Event, EventKind, Notifier};
use serde_json::{Value, json};

struct SlackNotify;

const API_URL: &str = "https://slack.com/api/chat.postMessage";

fn text_block(text: &str) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})
}

/// The Block Kit blocks for `event`.
fn blocks(ctx: &StepContext, event: &Event) -> Vec<Value> {
    let sha = &ctx.artifact.commit_sha;
    let short = &sha[..sha.len().min(7)];
    let mut blocks = vec![text_block(&format!("*{}*", event.summary))];
    blocks.push(
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
            "{} `{short}` · {} · run {}",
            ctx.artifact.repository, ctx.environment, ctx.run_id
        )}]}),
    );
    match &event.kind {
        EventKind::AwaitingApproval(request) => {
            if !event.evidence.is_empty() {
                let lines: Vec<String> = event
                    .evidence
                    .iter()
                    .take(15)
                    .map(|o| format!("• {}: {}", o.name, o.value))
                    .collect();
                blocks.push(text_block(&format!(
                    "Evidence so far:\n{}",
                    lines.join("\n")
                )));
            }
            let mut rules = format!(
                "Needs {} approval(s), {} so far, from: {}.",
                request.required,
                request.received,
                request.approvers.join(", ")
            );
            if !request.excluded.is_empty() {
                rules.push_str(&format!(" Not from: {}.", request.excluded.join(", ")));
            }
            blocks.push(text_block(&rules));
            let value = json!({
                "run": ctx.run_id,
                "environment": ctx.environment,
                "token": request.token,
            })
            .to_string();
            blocks.push(
                json!({"type": "actions", "block_id": "gantry_decision", "elements": [
                    {"type": "button", "action_id": "gantry_approve", "style": "primary",
                     "text": {"type": "plain_text", "text": "Approve"}, "value": value},
                    {"type": "button", "action_id": "gantry_reject", "style": "danger",
                     "text": {"type": "plain_text", "text": "Reject"}, "value": value},
                ]}),
            );
        }
        EventKind::Failed(reason) => blocks.push(text_block(&format!("Failed: {reason}"))),
        EventKind::RolledBack(r) => blocks.push(text_block(&format!(
            "Rolled back from `{}` to `{}`: {}",
            &r.from_sha[..r.from_sha.len().min(7)],
            &r.to_sha[..r.to_sha.len().min(7)],
            r.reason
        ))),
        EventKind::Started | EventKind::Succeeded => {}
    }
    if let Some(url) = &event.url {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("<{url}|Open the run>")}]}));
    }
    blocks
}

impl Notifier for SlackNotify {
    fn notify(ctx: StepContext, event: Event) -> Result<(), String> {
        let fallback = format!("[{}] {}", event.kind.name(), event.summary);
        let blocks = blocks(&ctx, &event);
        if let Some(webhook) = ctx.config("webhook_url") {
            let body = json!({"text": fallback, "blocks": blocks}).to_string();
            let response = http::post_json(webhook, &body, &[]).map_err(|e| e.describe())?;
            return if response.status == 200 {
                Ok(())
            } else {
                Err(format!(
                    "incoming webhook answered {}: {}",
                    response.status,
                    response.text()
                ))
            };
        }
        let channel = ctx.require("channel")?;
        let secret = ctx.config("token_secret").unwrap_or("SLACK_BOT_TOKEN");
        let token = gantry_sdk::secrets::get(secret)
            .ok_or_else(|| format!("secret {secret} is not granted for {}", ctx.environment))?;
        let url = ctx.config("api_url").unwrap_or(API_URL);
        let body = json!({"channel": channel, "text": fallback, "blocks": blocks}).to_string();
        let auth = format!("Bearer {token}");
        let response =
            http::post_json(url, &body, &[("authorization", &auth)]).map_err(|e| e.describe())?;
        if response.status != 200 {
            return Err(format!(
                "chat.postMessage answered {}: {}",
                response.status,
                response.text()
            ));
        }
        let answer: Value = serde_json::from_slice(&response.body)
            .map_err(|e| format!("chat.postMessage answered non-JSON: {e}"))?;
        if answer["ok"] == true {
            Ok(())
        } else {
            Err(format!(
                "chat.postMessage refused the message: {}",
                answer["error"].as_str().unwrap_or("no error given")
            ))
        }
    }
}

gantry_sdk::export_notifier!(SlackNotify);
gantry_sdk::config_keys!(
    r#"{"channel": "text", "webhook_url": "url", "api_url": "url", "token_secret": "secret"}"#
);
