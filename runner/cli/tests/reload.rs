//! Reloading the pipeline files on the real binary: SIGHUP with a broken
//! file is refused (its error logged with its place) and the running
//! definition kept; SIGHUP with a valid change applies to new runs while a
//! run waiting for approval keeps the definition it started with;
//! `gantry reload` answers the same, as the admin only.

mod common;

use common::*;

const NEXT: &str = "1111111aaaaaaa2222222bbbbbbb333333344444";
const DEV: &str = "4444444aaaaaaa5555555bbbbbbb666666677777";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_valid_files_in_for_new_runs_and_refuses_broken_ones() {
    let mut h = Harness::new(|t| t).await;
    h.start(&[]);
    let original = std::fs::read_to_string(&h.config).expect("pipeline");

    // A run waits for one approval in production under the first file.
    let (_, sub) = h.submit(merge(GOOD, "erin")).await;
    let waiting = sub["run"].as_str().expect("run").to_string();
    let first = h.wait_for_approval(&waiting).await;

    // A broken file: refused with its place; new runs keep the old one.
    std::fs::write(&h.config, original.replace("required: 1", "required: many")).expect("write");
    let from = h.server().line_count();
    h.server().signal("HUP");
    let refused = h.server().wait_line(from, "reload refused");
    let error = h.server().wait_line(from, "required");
    assert!(error.contains("gantry.yaml:"), "{refused}\n{error}");
    let (_, sub) = h.submit(push(DEV, "erin")).await;
    let dev = h
        .wait_status(sub["run"].as_str().expect("run"), "succeeded")
        .await;
    assert_eq!(dev["pipeline_version"], first["pipeline_version"]);

    // A valid change: production now needs two approvals, for new runs.
    std::fs::write(&h.config, original.replace("required: 1", "required: 2")).expect("write");
    let from = h.server().line_count();
    h.server().signal("HUP");
    let reloaded = h.server().wait_line(from, "reloaded the pipeline files");
    assert!(reloaded.contains("changed"), "{reloaded}");

    // The waiting run keeps its own: one approval is enough.
    h.decide_in_production(&waiting, "bob", true).await;
    h.wait_status(&waiting, "succeeded").await;

    // A new run needs two.
    let (_, sub) = h.submit(merge(NEXT, "erin")).await;
    let next = sub["run"].as_str().expect("run").to_string();
    let run = h.wait_for_approval(&next).await;
    assert_ne!(run["pipeline_version"], first["pipeline_version"]);
    h.decide_in_production(&next, "bob", true).await;
    let still = h
        .wait_run(&next, "one approval recorded", |r| {
            r["reason"].as_str().unwrap_or("").contains("carol")
        })
        .await;
    assert_eq!(still["status"], "waiting", "{still:#}");
    h.decide_in_production(&next, "carol", true).await;
    h.wait_status(&next, "succeeded").await;

    // `gantry reload`: the admin only; a broken file is an error with its
    // place, a valid unchanged one says so.
    let viewer = h.token("victor", "viewer").await;
    let (code, _, err) = cli_as(&h, &viewer, &["reload"]);
    assert_eq!(code, Some(2), "{err}");
    std::fs::write(&h.config, "pipeline: [").expect("write");
    let (code, _, err) = cli_as(&h, ADMIN_TOKEN, &["reload"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("gantry.yaml"), "{err}");
    std::fs::write(&h.config, original.replace("required: 1", "required: 2")).expect("write");
    let (code, out, err) = cli_as(&h, ADMIN_TOKEN, &["reload"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("pipeline `web`: unchanged"), "{out}");
}
