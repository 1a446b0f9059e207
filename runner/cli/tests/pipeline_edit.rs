//! A run keeps the pipeline definition it started with: the file is edited
//! while the run waits for approval and the server restarts, and the run
//! still finishes its original steps, while a new run takes the new ones.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_finishes_under_its_original_definition_after_an_edit_and_a_restart() {
    let mut h = Harness::new(|t| t).await;
    h.start(&[]);
    let (_, sub) = h.submit(push(GOOD, "alice")).await;
    h.wait_status(sub["run"].as_str().expect("run"), "succeeded")
        .await;
    let (_, sub) = h.submit(merge(GOOD, "alice")).await;
    let run = sub["run"].as_str().expect("run").to_string();
    let waiting = h.wait_status(&run, "waiting").await;
    assert_eq!(waiting["stages"][1]["steps"][1]["status"], "waiting");

    // Production changes completely: other approvers, one weight, a step
    // more, the approval renamed; staging loses a gate.
    let original = std::fs::read_to_string(&h.config).expect("pipeline file");
    let edited = original
        .replace("approvers: [alice, bob, carol]", "approvers: [zed]")
        .replace(
            "      - approval:\n",
            "      - approval:\n          name: sign-off\n",
        )
        .replace("weights: [10, 50, 100]", "weights: [100]")
        .replace(
            "      - gate:\n          name: error-rate\n",
            "      - gate:\n          name: error-rate-v2\n",
        )
        + "  qa:\n    trigger:\n      promote_from: production\n    steps:\n      - deploy:\n          command: [\"true\"]\n";
    assert_ne!(edited, original);
    std::fs::write(&h.config, &edited).expect("edit the pipeline");
    h.start(&[]);

    // bob approves under the original rules (the new file lists only zed).
    let decide = serde_json::json!({"environment": "production", "user": "bob", "approve": true, "reason": "ok"});
    let (status, answer) = h
        .api(
            reqwest::Method::POST,
            &format!("/api/runs/{run}/decisions"),
            Some(decide),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let done = h.wait_status(&run, "succeeded").await;
    let stages: Vec<&str> = done["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter_map(|s| s["environment"].as_str())
        .collect();
    assert_eq!(
        stages,
        ["staging", "production"],
        "the run took no new stage"
    );
    assert_eq!(done["stages"][1]["steps"][1]["name"], "approval");
    let canary_keys: Vec<String> = h
        .app("production")
        .effects
        .keys()
        .filter(|k| k.starts_with(&run))
        .cloned()
        .collect();
    assert_eq!(
        canary_keys.len(),
        3,
        "the original canary deploys 10/50/100: {canary_keys:?}"
    );

    // A new run takes the new definition: one weight, zed approves.
    let next_sha = "1111111aaaaaaa2222222bbbbbbb333333344444";
    let (_, sub) = h.submit(merge(next_sha, "erin")).await;
    let next = sub["run"].as_str().expect("run").to_string();
    let waiting = h.wait_status(&next, "waiting").await;
    assert_eq!(waiting["stages"][0]["steps"][2]["name"], "error-rate-v2");
    assert_eq!(waiting["stages"][1]["steps"][1]["name"], "sign-off");
    let decide = |user: &str| serde_json::json!({"environment": "production", "user": user, "approve": true, "reason": "ok"});
    let path = format!("/api/runs/{next}/decisions");
    let (status, _) = h
        .api(reqwest::Method::POST, &path, Some(decide("bob")))
        .await;
    assert_eq!(status, 403, "bob is no approver of the new definition");
    let (status, answer) = h
        .api(reqwest::Method::POST, &path, Some(decide("zed")))
        .await;
    assert_eq!(status, 200, "{answer}");
    let done = h.wait_status(&next, "succeeded").await;
    assert_eq!(done["stages"].as_array().map(Vec::len), Some(3), "{done}");
    let keys = h
        .app("production")
        .effects
        .keys()
        .filter(|k| k.starts_with(&next))
        .count();
    assert_eq!(keys, 1, "the new canary deploys once, at 100%");
}
