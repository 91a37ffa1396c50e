//! `cocoon bench policy`: what deciding a request costs the guest agent.
//! The generated policy of a sample pod decides the requests the shim
//! sends for it; the baseline, measured in the same run, is the same
//! requests through the agent with no policy (the request still turned
//! into its JSON input, which is then not evaluated).

use super::sample;
use anyhow::Result;
use clap::Args;
use cocoon_guest::pod::policy::Gate;
use cocoon_guest_protos::kata::agent;
use std::time::{Duration, Instant};

/// `cocoon bench policy`.
#[derive(Args, Debug)]
pub struct PolicyBenchArgs {
    /// Decisions timed per request kind.
    #[arg(long, default_value_t = 2000)]
    iterations: u32,
}

fn time(n: u32, mut f: impl FnMut()) -> Duration {
    // Warm up, then the median of five rounds.
    for _ in 0..(n / 10).max(1) {
        f();
    }
    let mut rounds: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed() / n
        })
        .collect();
    rounds.sort();
    rounds[2]
}

/// Creates per pod in [`time_creates`]: a container id is created once
/// under a policy, and a pod creates a few.
const CREATES_PER_POD: u32 = 4;

/// The median of five rounds of a tenth of `n` CreateContainer decisions,
/// each of a new container id, [`CREATES_PER_POD`] per policy loaded
/// afresh (the load is not timed): the state a decision adds stays as
/// small as in a pod.
fn time_creates(n: u32, text: &str, create: &agent::CreateContainerRequest) -> Result<Duration> {
    let per_round = (n / 10).max(CREATES_PER_POD);
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let mut spent = Duration::ZERO;
        let mut done = 0;
        while done < per_round {
            let gate = Gate::with_policy(text)?;
            for k in 0..CREATES_PER_POD {
                let mut r = create.clone();
                r.container_id = format!("b{k}");
                let t = Instant::now();
                gate.check(&r).expect("allowed");
                spent += t.elapsed();
            }
            done += CREATES_PER_POD;
        }
        rounds.push(spent / done);
    }
    rounds.sort();
    Ok(rounds[2])
}

/// Runs the benchmark.
pub fn run(a: PolicyBenchArgs) -> Result<()> {
    let regs = ["127.0.0.1:5000".to_string()];
    let opts = super::Options {
        deny_logs: false,
        kbs: Some("http://127.0.0.1:8080"),
        insecure_registries: &regs,
    };
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(sample::POD)?;
    let w = super::Workload::of(&doc)?.expect("the sample is a Pod");
    let data = super::policy_data(&w, &[sample::image()], &opts)?;
    let text = super::policy_text(&data)?;
    let t = Instant::now();
    let gate = Gate::with_policy(&text)?;
    let load = t.elapsed();
    let open = Gate::open();
    let create = sample::create("c1", sample::spec("container", "app"));
    let exec = sample::exec("c1", &["cat", "/tmp/ready"]);
    let read = agent::ReadStreamRequest {
        container_id: "c1".into(),
        len: 32768,
        ..Default::default()
    };
    // The exec and read decisions look the container up in the state the
    // create decision left.
    gate.check(&create)?;
    outln!(
        "policy: {} bytes, loaded in {:.2} ms; {} decisions per kind, median of 5 rounds",
        text.len(),
        load.as_secs_f64() * 1e3,
        a.iterations
    );
    outln!(
        "{:<24} {:>12} {:>14} {:>8}",
        "request",
        "policy µs",
        "no policy µs",
        "ratio"
    );
    let (mut create_cost, mut read_cost) = (Duration::ZERO, Duration::ZERO);
    for (name, req) in [
        (
            "CreateContainerRequest",
            &create as &dyn protobuf::MessageDyn,
        ),
        ("ExecProcessRequest", &exec),
        ("ReadStreamRequest", &read),
    ] {
        let with = if name == "CreateContainerRequest" {
            time_creates(a.iterations, &text, &create)?
        } else {
            time(a.iterations, || {
                gate.check(req).expect("allowed");
            })
        };
        let without = time(a.iterations, || {
            let _ = cocoon_guest_protos::json::to_value(req);
            open.check(req).expect("allowed");
        });
        match name {
            "CreateContainerRequest" => create_cost = with,
            "ReadStreamRequest" => read_cost = with,
            _ => {}
        }
        outln!(
            "{name:<24} {:>12.1} {:>14.1} {:>7.0}x",
            with.as_secs_f64() * 1e6,
            without.as_secs_f64() * 1e6,
            with.as_secs_f64() / without.as_secs_f64().max(1e-9)
        );
    }
    // A CRI pod start decides two creates (pause and app), and about ten
    // requests as light as a read (sandbox, network, pull, starts, waits).
    let per_pod = 2 * create_cost + 10 * read_cost;
    outln!(
        "per pod start: about {:.1} ms of policy decisions (2 creates + 10 light requests)",
        per_pod.as_secs_f64() * 1e3
    );
    Ok(())
}
