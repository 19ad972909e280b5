//! The key-value store on a real Legion region: operations through tasks, a model-based test
//! against a BTreeMap, precise refusals that leave the store unchanged, partitions by prefix, and
//! a task that works on its own segment through a view.

use std::collections::BTreeMap;
use std::process::ExitCode;

use kv_region::view::{with_reader, with_writer};
use kv_region::{
    register_tasks, Codec, ControlStore, FieldValue, Frame, KeyValueStore, KvError, Op, Outcome, ResultStore, StoreConfig,
    TelemetryCapacity, TelemetryStore,
};
use legion_bridge::harness::{case, check, run};
use legion_bridge::{register_task, Privilege, TaskContext, TaskError, TaskLauncher, VariantOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

fn small_store(ctx: &TaskContext, name: &str) -> Result<KeyValueStore, TaskError> {
    let config = StoreConfig::new(name)
        .segment("/", 64, 64 * 1024)
        .segment("/control/", 64, 64 * 1024)
        .segment("/worker/1/", 16, 8 * 1024)
        .segment("/worker/2/", 16, 8 * 1024)
        .max_value_bytes(4096);
    Ok(KeyValueStore::create(ctx, &config, None)?.0)
}

#[derive(Debug, Clone)]
enum ModelOp {
    Put(String, i64),
    Get(String),
    Delete(String),
    List(String),
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    let key = prop_oneof![
        (0u8..12).prop_map(|i| format!("/control/k{i}")),
        (0u8..8).prop_map(|i| format!("/worker/1/state/{i}")),
        (0u8..8).prop_map(|i| format!("/worker/2/state/{i}")),
        (0u8..6).prop_map(|i| format!("/other/{i}")),
    ];
    let prefix = prop_oneof![
        Just("/".to_string()),
        Just("/control/".to_string()),
        Just("/worker/".to_string()),
        Just("/worker/2/".to_string())
    ];
    prop_oneof![
        4 => (key.clone(), any::<i64>()).prop_map(|(k, v)| ModelOp::Put(k, v)),
        2 => key.clone().prop_map(ModelOp::Get),
        2 => key.prop_map(ModelOp::Delete),
        1 => prefix.prop_map(ModelOp::List),
    ]
}

fn main() -> ExitCode {
    register_tasks().unwrap();
    // Writes `count` keys into its own segment through a view, then reads them back.
    let own_segment = register_task(
        300,
        "own_segment",
        VariantOptions::leaf(),
        |ctx, (field, prefix, count): (legion_bridge::Field<kv_region::Slot>, String, usize)| {
            let region = ctx.region(0)?;
            with_writer(&region, field, |view| {
                for i in 0..count {
                    view.put(&format!("{prefix}item/{i}"), Codec::Json, i.to_string().as_bytes())?;
                }
                // A key of another segment is not reachable from here.
                match view.put("/control/intruder", Codec::Json, b"1") {
                    Err(KvError::KeyNotInView { .. }) => Ok(()),
                    other => Err(KvError::Layout(format!("foreign key accepted: {other:?}"))),
                }
            })?;
            Ok(with_reader(&region, field, |view| Ok(view.list(&prefix).len()))?)
        },
    )
    .unwrap();

    let cases = vec![
        case("put_get_delete_list_through_tasks", |ctx| {
            let store = small_store(ctx, "basic")?;
            store.put(ctx, "/control/graph/version", &json!(3))?;
            store.put(ctx, "/worker/1/state/frame", &json!({"frame": 17, "ok": true}))?;
            store.put(ctx, "/elsewhere/x", &json!("default segment"))?;
            check(store.get(ctx, "/control/graph/version")? == Some(json!(3)), "version")?;
            check(
                store.get(ctx, "/worker/1/state/frame")? == Some(json!({"frame": 17, "ok": true})),
                "frame",
            )?;
            check(store.get(ctx, "/control/missing")?.is_none(), "missing key")?;
            let all = store.list(ctx, "/")?;
            check(
                all == ["/control/graph/version", "/elsewhere/x", "/worker/1/state/frame"],
                format!("list / = {all:?}"),
            )?;
            check(store.list(ctx, "/worker/")? == ["/worker/1/state/frame"], "list /worker/")?;
            check(store.delete(ctx, "/control/graph/version")?, "delete existing")?;
            check(!store.delete(ctx, "/control/graph/version")?, "delete missing")?;
            check(store.get(ctx, "/control/graph/version")?.is_none(), "deleted key still there")
        }),
        case("batched_puts_and_gets_across_segments", |ctx| {
            let store = small_store(ctx, "batch")?;
            let values: Vec<(String, Value)> = (0..30)
                .map(|i| (format!("/{}/b{i}", ["control", "worker/1", "worker/2"][i % 3]), json!(i)))
                .collect();
            let refs: Vec<(&str, &Value)> = values.iter().map(|(k, v)| (k.as_str(), v)).collect();
            store.put_many(ctx, &refs)?;
            let keys: Vec<&str> = values.iter().map(|(k, _)| k.as_str()).collect();
            let got = store.get_many(ctx, &keys)?;
            check(
                got == values.iter().map(|(_, v)| Some(v.clone())).collect::<Vec<_>>(),
                "batched get",
            )
        }),
        case("values_span_consecutive_points", |ctx| {
            let store = small_store(ctx, "big")?;
            let text = "x".repeat(3000);
            store.put(ctx, "/control/big", &json!(text))?;
            check(store.get(ctx, "/control/big")? == Some(json!(text)), "big value")
        }),
        case("bad_input_is_refused_precisely_and_changes_nothing", |ctx| {
            let store = small_store(ctx, "refusals")?;
            store.put(ctx, "/control/keep", &json!("kept"))?;
            let before = store.list(ctx, "/")?;
            let invalid_key = store.put(ctx, "control//x", &json!(1)).unwrap_err();
            check(matches!(invalid_key, KvError::InvalidKey { .. }), format!("{invalid_key}"))?;
            let invalid_json = store.put_json_text(ctx, "/control/j", "{\"a\": ").unwrap_err();
            check(matches!(invalid_json, KvError::InvalidJson { .. }), format!("{invalid_json}"))?;
            let too_large = store.put(ctx, "/control/huge", &json!("y".repeat(5000))).unwrap_err();
            check(
                matches!(too_large, KvError::ValueTooLarge { len: 5002, max: 4096, .. }),
                format!("{too_large}"),
            )?;
            // A batch with one bad operation is refused whole.
            let mixed = store.apply(
                ctx,
                vec![
                    Op::Put {
                        key: "/control/ok".into(),
                        codec: Codec::Json,
                        value: b"1".to_vec(),
                    },
                    Op::Put {
                        key: "/control/bad".into(),
                        codec: Codec::Json,
                        value: b"{".to_vec(),
                    },
                ],
            );
            check(matches!(mixed, Err(KvError::InvalidJson { .. })), "mixed batch accepted")?;
            // Fill a worker segment until it is full: a precise error, the earlier keys intact.
            let mut stored = 0;
            let full = loop {
                match store.put(ctx, &format!("/worker/2/fill/{stored}"), &json!("z".repeat(700))) {
                    Ok(()) => stored += 1,
                    Err(e) => break e,
                }
                if stored > 100 {
                    return Err(TaskError::msg("segment never filled"));
                }
            };
            check(
                matches!(full, KvError::StoreFull { ref prefix, .. } if prefix == "/worker/2/"),
                format!("{full}"),
            )?;
            check(store.list(ctx, "/worker/2/")?.len() == stored, "keys lost when full")?;
            let after: Vec<String> = store
                .list(ctx, "/")?
                .into_iter()
                .filter(|k| !k.starts_with("/worker/2/fill/"))
                .collect();
            check(after == before, format!("store changed by refusals: {after:?}"))
        }),
        case("store_matches_a_btreemap_model", |ctx| {
            let mut runner = TestRunner::new(Config {
                cases: 24,
                failure_persistence: None,
                ..Config::default()
            });
            let round = std::cell::Cell::new(0);
            let result = runner.run(&prop::collection::vec(model_op(), 1..40), |ops| {
                round.set(round.get() + 1);
                let store = small_store(ctx, &format!("model{}", round.get())).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut model: BTreeMap<String, i64> = BTreeMap::new();
                for op in ops {
                    match op {
                        ModelOp::Put(key, value) => {
                            store
                                .put(ctx, &key, &json!(value))
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                            model.insert(key, value);
                        }
                        ModelOp::Get(key) => {
                            let got = store.get(ctx, &key).map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert_eq!(got, model.get(&key).map(|v| json!(v)));
                        }
                        ModelOp::Delete(key) => {
                            let existed = store.delete(ctx, &key).map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert_eq!(existed, model.remove(&key).is_some());
                        }
                        ModelOp::List(prefix) => {
                            let keys = store.list(ctx, &prefix).map_err(|e| TestCaseError::fail(e.to_string()))?;
                            let expected: Vec<String> = model.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
                            prop_assert_eq!(keys, expected);
                        }
                    }
                }
                Ok(())
            });
            result.map_err(|e| TaskError::msg(format!("model disagreement: {e}")))
        }),
        case("partition_by_prefixes_and_tasks_on_their_own_segment", move |ctx| {
            let store = small_store(ctx, "parts")?;
            let workers = store.partition_by_prefixes(ctx, &["/worker/1/", "/worker/2/"])?;
            let counts: Vec<usize> = (1..=2)
                .map(|w| {
                    let prefix = format!("/worker/{w}/");
                    let req = store.requirement(ctx, &prefix, Privilege::ReadWrite)?;
                    ctx.execute(&TaskLauncher::new(own_segment, &(store.field(), prefix, 3 + w))?.region(req))?
                        .get()
                        .map_err(TaskError::from)
                })
                .collect::<Result<_, _>>()?;
            check(counts == [4, 5], format!("counts {counts:?}"))?;
            check(
                store.list(ctx, "/worker/1/item/")?.len() == 4,
                "items of worker 1 through the store",
            )?;
            // The partition by prefixes names exactly the worker segments.
            let sub = ctx.subregion(workers, 1);
            check(
                ctx.index_space_bounds(sub.index_space())? == store.points_of("/worker/2/")?,
                "worker 2 subregion bounds",
            )?;
            check(
                matches!(
                    store.partition_by_prefixes(ctx, &["/worker/", "/worker/1/"]),
                    Err(KvError::Layout(_))
                ),
                "overlap accepted",
            )?;
            check(
                matches!(store.partition_by_prefixes(ctx, &["/nothing/"]), Err(KvError::UnknownPrefix { .. })),
                "unknown prefix accepted",
            )
        }),
        case("reads_of_wrong_codec_are_refused", |ctx| {
            let store = small_store(ctx, "codec")?;
            store.put_bincode(ctx, "/control/frame", &vec![1.5f64, 2.5])?;
            check(
                store.get_bincode::<Vec<f64>>(ctx, "/control/frame")? == Some(vec![1.5, 2.5]),
                "bincode round trip",
            )?;
            check(
                matches!(store.get(ctx, "/control/frame"), Err(KvError::WrongCodec { .. })),
                "bincode read as JSON",
            )?;
            let outcome = store.apply(
                ctx,
                vec![Op::Get {
                    key: "/control/frame".into(),
                }],
            )?;
            check(matches!(outcome[0], Ok(Outcome::Value(Some((Codec::Bincode, _))))), "raw get")
        }),
        case("typed_stores_hold_frames_graphs_state_and_bins", |ctx| {
            let capacity = TelemetryCapacity {
                frames: 64,
                bytes: 4 << 20,
                max_frame_bytes: 2 << 20,
            };
            let (telemetry, _) = TelemetryStore::create(ctx, 2, capacity, None)?;
            let image: Vec<f64> = (0..64 * 64).map(|i| i as f64 * 0.25).collect();
            let frames: Vec<Frame> = (10..14)
                .map(|seq| Frame {
                    seq,
                    timestamp_ns: seq * 1_000_000,
                    fields: vec![
                        ("energy".into(), FieldValue::Scalar(seq as f64)),
                        ("trace".into(), FieldValue::Waveform(vec![1.0, 2.0, seq as f64])),
                        (
                            "cspad".into(),
                            FieldValue::Image {
                                width: 64,
                                height: 64,
                                pixels: image.clone(),
                            },
                        ),
                    ],
                })
                .collect();
            telemetry.put_frames(ctx, 1, &frames)?;
            check(telemetry.frame_seqs(ctx, 1)? == [10, 11, 12, 13], "frame sequence numbers")?;
            check(telemetry.frame_seqs(ctx, 0)?.is_empty(), "partition 0 untouched")?;
            check(telemetry.get_frame(ctx, 1, 12)?.as_ref() == Some(&frames[2]), "frame round trip")?;
            // Compact: 64x64 f64 pixels take about 8 bytes each, not JSON text.
            let stored = telemetry.store().apply(
                ctx,
                vec![Op::Get {
                    key: TelemetryStore::frame_key(1, 12),
                }],
            )?;
            let Ok(Outcome::Value(Some((Codec::Bincode, bytes)))) = &stored[0] else {
                return Err(TaskError::msg("frame not stored as bincode"));
            };
            check(bytes.len() < 64 * 64 * 8 + 200, format!("frame takes {} bytes", bytes.len()))?;
            telemetry.drop_frames(ctx, 1, &[10, 11])?;
            check(telemetry.frame_seqs(ctx, 1)? == [12, 13], "dropped frames")?;

            let (control, _) = ControlStore::create(ctx, 64, 64 * 1024, None)?;
            check(control.graph_version(ctx)? == 0, "no graph yet")?;
            control.install_graph(ctx, 1, &json!({"nodes": []}))?;
            control.install_graph(ctx, 2, &json!({"nodes": [{"id": "roi"}]}))?;
            check(control.graph_version(ctx)? == 2, "current version")?;
            check(control.graph(ctx, 1)? == Some(json!({"nodes": []})), "old version kept")?;
            control.save_state(ctx, "source-0", &json!({"next_frame": 99}))?;
            control.heartbeat(ctx, "source-0", 1_700_000_000_000)?;
            check(control.state(ctx, "source-0")? == Some(json!({"next_frame": 99})), "state")?;
            check(
                matches!(control.save_state(ctx, "bad name", &json!(1)), Err(KvError::InvalidKey { .. })),
                "bad component name",
            )?;

            let (results, _) = ResultStore::create(ctx, 256, 256 * 1024, 64 * 1024, None)?;
            for bin in 0..5 {
                results.put_bin(ctx, "roi_mean", bin, &json!(bin as f64 / 2.0))?;
            }
            check(results.bins(ctx, "roi_mean")? == [0, 1, 2, 3, 4], "bins")?;
            check(results.drop_bins_before(ctx, "roi_mean", 3)? == 3, "dropped bins")?;
            check(
                results.bins(ctx, "roi_mean")? == [3, 4] && results.bin(ctx, "roi_mean", 4)? == Some(json!(2.0)),
                "retained bins",
            )
        }),
    ];
    run(&[], cases)
}
