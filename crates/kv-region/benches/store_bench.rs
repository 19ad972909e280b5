//! Throughput of the key-value store on the real runtime: puts and gets (batched through tasks,
//! one operation per task, and directly through a view inside one task), listing 100k keys,
//! snapshot MB/s and the time to reload 100k keys from the data directory.
//!
//! Run: `cargo bench -p kv-region --bench store_bench [-- --keys N]` (default 100000 keys,
//! values about 40 bytes of JSON, batches of 1000 operations).

use std::time::Instant;

use kv_region::view::with_writer;
use kv_region::{register_tasks, Codec, KeyValueStore, Op, StoreConfig};
use legion_bridge::harness::option;
use legion_bridge::{register_task, runtime, Field, Privilege, TaskContext, TaskError, TaskLauncher, VariantOptions};
use serde_json::json;

const BATCH: usize = 1000;
const SINGLE_OPS: usize = 2000;

fn key(i: usize) -> String {
    format!("/bench/item/{i:08}")
}

fn rate(count: usize, started: Instant) -> f64 {
    count as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let keys = option("--keys", 100_000);
    register_tasks().unwrap();
    let view_puts = register_task(
        400,
        "bench_view_puts",
        VariantOptions::leaf(),
        |ctx, (field, n): (Field<kv_region::Slot>, usize)| {
            let region = ctx.region(0)?;
            let started = Instant::now();
            with_writer(&region, field, |view| {
                for i in 0..n {
                    view.put(
                        &format!("/bench/view/{i:08}"),
                        Codec::Json,
                        format!("{{\"i\":{i},\"v\":{}}}", i as f64 * 0.5).as_bytes(),
                    )?;
                }
                Ok(())
            })?;
            Ok(rate(n, started))
        },
    )
    .unwrap();
    let data_dir = std::env::temp_dir().join(format!("ami2-kv-bench-{}", std::process::id()));
    let config = StoreConfig::new("bench").segment("/bench/", keys * 2 + 16, (keys * 2 + 16) * 256);
    println!(
        "store_bench: {keys} keys, batches of {BATCH}, Legion {}",
        runtime::default_args().join(" ")
    );
    let dir = data_dir.clone();
    let report = runtime::start(&[], move |ctx: &TaskContext| {
        let (store, _) = KeyValueStore::create(ctx, &config, Some(&dir))?;
        let mut lines = Vec::new();
        let value = |i: usize| json!({"i": i, "v": i as f64 * 0.5});

        let started = Instant::now();
        for chunk in (0..keys).collect::<Vec<_>>().chunks(BATCH) {
            let ops = chunk
                .iter()
                .map(|&i| Op::Put {
                    key: key(i),
                    codec: Codec::Json,
                    value: serde_json::to_vec(&value(i)).unwrap(),
                })
                .collect();
            for r in store.apply(ctx, ops)? {
                r?;
            }
        }
        lines.push(format!("puts, batched ({BATCH}/task)      {:>12.0} /s", rate(keys, started)));

        let started = Instant::now();
        for i in (0..keys).step_by(BATCH) {
            let batch: Vec<String> = (i..(i + BATCH).min(keys)).map(key).collect();
            let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
            let got = store.get_many(ctx, &refs)?;
            if got.iter().any(Option::is_none) {
                return Err(TaskError::msg("missing key"));
            }
        }
        lines.push(format!("gets, batched ({BATCH}/task)      {:>12.0} /s", rate(keys, started)));

        let started = Instant::now();
        for i in 0..SINGLE_OPS {
            store.put(ctx, &format!("/bench/single/{i:06}"), &value(i))?;
        }
        lines.push(format!("puts, one per task              {:>12.0} /s", rate(SINGLE_OPS, started)));
        let started = Instant::now();
        for i in 0..SINGLE_OPS {
            store.get(ctx, &format!("/bench/single/{i:06}"))?;
        }
        lines.push(format!("gets, one per task              {:>12.0} /s", rate(SINGLE_OPS, started)));

        let requirement = store.requirement(ctx, "/bench/", Privilege::ReadWrite)?;
        let in_task = ctx
            .execute(&TaskLauncher::new(view_puts, &(store.field(), keys / 2))?.region(requirement))?
            .get()?;
        lines.push(format!("puts, inside one task (view)    {in_task:>12.0} /s"));

        let started = Instant::now();
        let listed = store.list(ctx, "/bench/item/")?;
        lines.push(format!(
            "list {} keys                 {:>9.1} ms",
            listed.len(),
            started.elapsed().as_secs_f64() * 1e3
        ));

        let started = Instant::now();
        let stats = store.snapshot(ctx)?;
        let secs = started.elapsed().as_secs_f64();
        let bytes: u64 = stats.iter().map(|s| s.bytes).sum();
        let total_keys: usize = stats.iter().map(|s| s.keys).sum();
        lines.push(format!(
            "snapshot {total_keys} keys, {:.1} MB  {:>9.1} MB/s ({:.0} ms)",
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs,
            secs * 1e3
        ));

        let started = Instant::now();
        let (_reloaded, loaded) = KeyValueStore::create(ctx, &config, Some(&dir))?;
        let reloaded_keys: usize = loaded.iter().map(|s| s.keys).sum();
        lines.push(format!(
            "reload {reloaded_keys} keys              {:>9.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        ));
        Ok(lines)
    })
    .expect("benchmark runtime");
    for line in report {
        println!("  {line}");
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}
