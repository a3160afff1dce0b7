//! The cost that the limiter and the breaker add to every query, measured through the actors
//! as the query path uses them: limiter acquire (a `TryAcquire` message) and release (dropping
//! the permit), breaker check (`Allow`) and record (`RecordOutcome`).
//!
//! Run: `cargo bench -p ccd-actors --bench resilience`. Target: under 50 µs per query for both.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use ccd_actors::resilience::breaker::{BreakerCore, BreakerSpec, Outcome};
use ccd_actors::resilience::limiter::LimiterCore;
use ccd_actors::resilience::{
    Allow, BreakerActor, LimiterActor, LimiterConfig, RecordOutcome, TryAcquire,
};
use ccd_actors::supervise::{Call, HealthRegistry};
use criterion::{Criterion, criterion_group, criterion_main};

fn resilience(c: &mut Criterion) {
    let system = actix_rt::System::new();
    let (limiter, breaker) = system.block_on(async {
        let health = HealthRegistry::new(Default::default());
        // Every algorithm on, with limits far above what the benchmark reaches.
        let limits = LimiterConfig {
            global_rate_per_s: 1_000_000.0,
            global_burst: 1_000_000,
            global_window_max: 1_000_000_000,
            global_window_ms: 1_000,
            global_concurrency: 1_000,
            model_concurrency: 1_000,
            project_concurrency: 1_000,
            ..Default::default()
        };
        let limiter = LimiterActor::new(
            health.register("limiter"),
            LimiterCore::new(),
            Arc::new(Mutex::new(limits)),
        );
        let breaker = BreakerActor::new(
            health.register("breaker"),
            BreakerCore::new(),
            BreakerSpec::default(),
            Default::default(),
        );
        (
            Supervisor::start(move |_| limiter),
            Supervisor::start(move |_| breaker),
        )
    });

    let mut group = c.benchmark_group("per query");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("limiter acquire + release", |b| {
        b.iter(|| {
            system.block_on(async {
                let request = TryAcquire {
                    model: Some("m".into()),
                    project: Some("p".into()),
                    wait: false,
                    again: false,
                };
                let permit = limiter.send(Call(request)).await.unwrap().unwrap().unwrap();
                drop(permit);
            })
        })
    });
    group.bench_function("breaker check + record", |b| {
        b.iter(|| {
            system.block_on(async {
                breaker
                    .send(Call(Allow {
                        key: "claude|m".into(),
                    }))
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                let record = RecordOutcome {
                    key: "claude|m".into(),
                    outcome: Some(Outcome::Success),
                    duration: Duration::from_millis(5),
                };
                breaker.send(Call(record)).await.unwrap().unwrap();
            })
        })
    });
    group.bench_function("limiter + breaker (both, as a query pays)", |b| {
        b.iter(|| {
            system.block_on(async {
                let request = TryAcquire {
                    model: Some("m".into()),
                    project: Some("p".into()),
                    wait: false,
                    again: false,
                };
                let permit = limiter.send(Call(request)).await.unwrap().unwrap().unwrap();
                breaker
                    .send(Call(Allow {
                        key: "claude|m".into(),
                    }))
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                let record = RecordOutcome {
                    key: "claude|m".into(),
                    outcome: Some(Outcome::Success),
                    duration: Duration::from_millis(5),
                };
                breaker.send(Call(record)).await.unwrap().unwrap();
                drop(permit);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, resilience);
criterion_main!(benches);
