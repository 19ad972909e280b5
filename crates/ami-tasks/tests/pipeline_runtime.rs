//! The event pipeline end to end on the real runtime: golden results through the whole flow
//! (scalars from a recording; images and waveforms read in place from the telemetry store),
//! 1 vs 4 partitions, a graph change mid-stream, a graph failing at run time, a data directory
//! continued with another partition count.

use std::collections::BTreeMap;
use std::process::ExitCode;

use ami_tasks::event::bin_width_ns;
use ami_tasks::graph::{GraphSpec, NodeSpec};
use ami_tasks::pipeline::{install_graph, Flow, Observer, PipelineConfig};
use ami_tasks::source::{write_recording, ImageSpec, SourceConfig, SyntheticConfig, SyntheticGenerator, WaveformSpec};
use ami_tasks::stores::{result_key, Stores};
use ami_tasks::{EmittedBin, GlobalReport, PipelineError};
use kv_region::{FieldValue, Frame};
use legion_bridge::harness::{case, check, run};
use legion_bridge::{TaskContext, TaskError};
use serde_json::{json, Value};

/// Collects every emitted bin; optionally installs a graph after `switch_after` reports, and
/// reads the Results store at the end.
#[derive(Default)]
struct Collect {
    bins: Vec<EmittedBin>,
    reports: usize,
    switch_after: Option<(usize, GraphSpec)>,
    switched_at_bin: Option<u64>,
    stored: BTreeMap<String, Value>,
    /// The keys Results held after the last report.
    latest_keys: Vec<String>,
}

impl Collect {
    /// Installs `spec` after `reports` reports.
    fn switching_after(reports: usize, spec: GraphSpec) -> Self {
        Collect {
            switch_after: Some((reports, spec)),
            ..Collect::default()
        }
    }
}

/// Results held, after the last report, exactly the newest `n` bins published, under the names
/// each was published with.
fn holds_the_newest_bins(collect: &Collect, n: usize) -> Result<(), TaskError> {
    let mut expected: Vec<String> = collect.bins[collect.bins.len().saturating_sub(n)..]
        .iter()
        .flat_map(|bin| bin.values.keys().map(|name| result_key(name, bin.bin)))
        .collect();
    expected.sort();
    let mut held = collect.latest_keys.clone();
    held.sort();
    check(held == expected, format!("Results holds {held:?}, expected {expected:?}"))
}

impl Observer for Collect {
    fn on_report(&mut self, ctx: &TaskContext, stores: &Stores, report: &GlobalReport) -> Result<Flow, PipelineError> {
        self.bins.extend(report.emitted.iter().cloned());
        self.reports += 1;
        if let Some((after, spec)) = &self.switch_after {
            if self.reports == *after {
                install_graph(ctx, stores, spec)?;
                self.switched_at_bin = self.bins.last().map(|b| b.bin);
            }
        }
        self.latest_keys = stores.results.list(ctx, "/results/")?;
        for key in &self.latest_keys {
            let value = stores.results.get(ctx, key)?.unwrap_or(Value::Null);
            self.stored.insert(key.clone(), value);
        }
        Ok(Flow::Continue)
    }
}

fn energy_graph() -> GraphSpec {
    GraphSpec {
        nodes: vec![
            NodeSpec::new("energy", "select", &[], json!({"field": "energy", "kind": "scalar"})),
            NodeSpec::new("energy_chart", "strip_chart", &["energy"], json!({})),
            NodeSpec::new(
                "energy_hist",
                "histogram",
                &["energy"],
                json!({"bins": 10, "low": 0.0, "high": 10.0}),
            ),
        ],
        results: vec!["energy_chart".into(), "energy_hist".into()],
    }
}

fn synthetic(frames: u64) -> SourceConfig {
    SourceConfig::Synthetic(SyntheticConfig {
        frames: Some(frames),
        rate_hz: None,
        ..SyntheticConfig::scalars_only()
    })
}

fn config(source: SourceConfig, partitions: usize, graph: GraphSpec) -> PipelineConfig {
    PipelineConfig {
        source,
        partitions,
        batch_size: 100,
        graph: Some(graph),
        ..PipelineConfig::default()
    }
}

fn run_collect(ctx: &TaskContext, config: &PipelineConfig, mut collect: Collect) -> Result<Collect, TaskError> {
    ami_tasks::run(ctx, config, None, &mut collect)?;
    Ok(collect)
}

/// The same bins with the same events and values (up to rounding), holding `events` in all.
fn same_bins(a: &[EmittedBin], b: &[EmittedBin], events: u64) -> Result<(), TaskError> {
    check(a.len() == b.len() && !a.is_empty(), format!("{} vs {} bins", a.len(), b.len()))?;
    let total: u64 = a.iter().map(|bin| bin.events).sum();
    check(total == events, format!("{total} events in bins"))?;
    for (x, y) in a.iter().zip(b) {
        check(x.bin == y.bin && x.events == y.events, format!("bin {} / {}", x.bin, y.bin))?;
        for (name, value) in &x.values {
            check(
                close(value, &y.values[name]),
                format!("bin {} {name}: {value} vs {}", x.bin, y.values[name]),
            )?;
        }
    }
    Ok(())
}

/// Equal up to floating-point rounding (merges happen in different orders).
fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            (x - y).abs() <= 1e-9 * (1.0 + x.abs().max(y.abs()))
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w))),
        _ => a == b,
    }
}

/// Fresh stores without a data directory, sized for one partition of tiny frames (for cases
/// that exercise Control or Results directly).
fn small_stores(ctx: &TaskContext) -> Result<Stores, TaskError> {
    Ok(Stores::create(ctx, &small_sizes(), None)?.0)
}

/// Store sizes of one partition with room for a few small frames.
fn small_sizes() -> ami_tasks::stores::StoreSizes {
    ami_tasks::stores::StoreSizes {
        partitions: 1,
        buffers: 2,
        frames_per_buffer: 1,
        max_frame_bytes: 1024,
        chunk_bytes: 4096,
        result_keys: 64,
    }
}

/// Runs the energy graph, then switches to a graph that compiles but fails on every event.
struct Breaker {
    inner: Collect,
    broken: GraphSpec,
    incidents: usize,
}

impl Observer for Breaker {
    fn on_report(&mut self, ctx: &TaskContext, stores: &Stores, report: &GlobalReport) -> Result<Flow, PipelineError> {
        self.inner.on_report(ctx, stores, report)?;
        if self.inner.reports == 3 {
            install_graph(ctx, stores, &self.broken)?;
        }
        self.incidents = stores.control.list(ctx, "/incident/")?.len();
        Ok(Flow::Continue)
    }
}

/// Stops the run after `0` reports.
struct StopAfter(usize);

impl Observer for StopAfter {
    fn on_report(&mut self, _: &TaskContext, _: &Stores, _: &GlobalReport) -> Result<Flow, PipelineError> {
        self.0 = self.0.saturating_sub(1);
        Ok(if self.0 == 0 { Flow::Stop } else { Flow::Continue })
    }
}

/// A conversion of the saved positions of `dir` to `partitions` partitions as a crash in its
/// middle leaves it: the conversion written, and the states of the first `written` partitions
/// only.
fn interrupted_conversion(ctx: &TaskContext, dir: &std::path::Path, partitions: usize, written: usize) -> Result<(), TaskError> {
    use ami_tasks::partition_change::{source_state_doc, Conversion, CONVERSION_KEY};
    use ami_tasks::source::{resume::convert_positions, SourceStats};
    use ami_tasks::stores::{source_state_key, StoreSizes};
    let sizes = StoreSizes {
        partitions,
        buffers: 2,
        frames_per_buffer: 1,
        max_frame_bytes: 1024,
        chunk_bytes: 4096,
        result_keys: 64,
    };
    let (stores, _) = Stores::create(ctx, &sizes, Some(dir))?;
    let mut old = Vec::new();
    let mut from = 0;
    while let Some(state) = stores.control.get(ctx, &source_state_key(from))? {
        old.push(Some(serde_json::from_value(state["position"].clone())?));
        from += 1;
    }
    let positions = convert_positions(&old, partitions);
    let conversion = Conversion {
        from,
        partitions,
        positions: positions.clone(),
    };
    stores.control.put(ctx, CONVERSION_KEY, &serde_json::to_value(&conversion)?)?;
    for (p, position) in positions.iter().enumerate().take(written) {
        let doc = source_state_doc(position, &SourceStats::default(), false, partitions);
        stores.control.put(ctx, &source_state_key(p), &doc)?;
    }
    stores.destroy(ctx);
    Ok(())
}

/// Synthetic frames with a 40×30 image and a 100-sample waveform, 1 ms apart.
fn arrays_source(frames: u64) -> SyntheticConfig {
    SyntheticConfig {
        frames: Some(frames),
        rate_hz: None,
        scalars: vec!["energy".into()],
        waveforms: vec![WaveformSpec {
            name: "wave".into(),
            length: 100,
        }],
        images: vec![ImageSpec {
            name: "cam".into(),
            width: 40,
            height: 30,
            dtype: Default::default(),
        }],
        ..SyntheticConfig::default()
    }
}

/// Mean of a 10×20 region of interest of the image, and the sum of the waveform.
fn arrays_graph() -> GraphSpec {
    GraphSpec {
        nodes: vec![
            NodeSpec::new("cam", "select", &[], json!({"field": "cam", "kind": "image"})),
            NodeSpec::new("roi", "roi", &["cam"], json!({"x0": 5, "y0": 7, "x1": 15, "y1": 27})),
            NodeSpec::new("roi_mean", "mean", &["roi"], json!({})),
            NodeSpec::new("roi_chart", "strip_chart", &["roi_mean"], json!({})),
            NodeSpec::new("wave", "select", &[], json!({"field": "wave", "kind": "waveform"})),
            NodeSpec::new("wave_sum", "sum", &["wave"], json!({})),
            NodeSpec::new("wave_chart", "strip_chart", &["wave_sum"], json!({})),
        ],
        results: vec!["roi_chart".into(), "wave_chart".into()],
    }
}

fn main() -> ExitCode {
    ami_tasks::register_tasks().unwrap();
    let cases = vec![
        case("golden_strip_chart_and_histogram_through_the_pipeline", |ctx| {
            // Known events over 3 bins of 20 Hz (50 ms), energies chosen by hand.
            let width = bin_width_ns(20.0);
            let energies: Vec<(u64, f64)> = vec![
                (0, 1.0),
                (10, 2.5),
                (49, 9.5),
                (50, 3.0),
                (99, 4.0),
                (100, 7.25),
                (120, 11.0),
                (149, 0.5),
            ];
            let frames: Vec<Frame> = energies
                .iter()
                .enumerate()
                .map(|(seq, (ms, e))| Frame {
                    seq: seq as u64,
                    timestamp_ns: ms * 1_000_000,
                    fields: vec![("energy".into(), FieldValue::Scalar(*e))],
                })
                .collect();
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pipeline-golden");
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("golden.rec");
            write_recording(&path, frames.into_iter(), |_| {})?;
            let source = SourceConfig::File { path, realtime: false };
            let collect = run_collect(ctx, &config(source, 2, energy_graph()), Collect::default())?;
            check(collect.bins.len() == 3, format!("{} bins", collect.bins.len()))?;
            for bin in &collect.bins {
                let mine: Vec<f64> = energies
                    .iter()
                    .filter(|(ms, _)| ms * 1_000_000 / width == bin.bin)
                    .map(|(_, e)| *e)
                    .collect();
                let mean = mine.iter().sum::<f64>() / mine.len() as f64;
                let chart = &bin.values["energy_chart"];
                check(chart["count"] == json!(mine.len()), format!("bin {} count {chart}", bin.bin))?;
                check(
                    (chart["mean"].as_f64().unwrap_or(f64::NAN) - mean).abs() < 1e-12,
                    format!("bin {} mean {chart} vs {mean}", bin.bin),
                )?;
                let hist = &bin.values["energy_hist"];
                let mut counts = vec![0u64; 10];
                let mut overflow = 0u64;
                for e in &mine {
                    if *e >= 10.0 {
                        overflow += 1;
                    } else {
                        counts[*e as usize] += 1;
                    }
                }
                check(
                    hist["counts"] == json!(counts) && hist["overflow"] == json!(overflow),
                    format!("bin {} histogram {hist}", bin.bin),
                )?;
                // The same value is in the Results store.
                let stored = collect
                    .stored
                    .get(&result_key("energy_chart", bin.bin))
                    .ok_or_else(|| TaskError::msg("bin not in Results"))?;
                check(close(&stored["value"], chart), format!("stored {stored}"))?;
            }
            Ok(())
        }),
        case("golden_images_and_waveforms_read_in_place", |ctx| {
            // Expected values computed here, from the generator's frames, pixel by pixel.
            let source = arrays_source(330);
            let generator = SyntheticGenerator::new(&source)?;
            let width = bin_width_ns(20.0);
            let mut expected: BTreeMap<u64, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
            for seq in 0..330 {
                let frame = generator.frame(seq);
                let (Some((_, FieldValue::Waveform(wave))), Some((_, FieldValue::Image { pixels, .. }))) =
                    (frame.fields.get(1), frame.fields.get(2))
                else {
                    return Err(TaskError::msg("unexpected synthetic fields"));
                };
                let mut roi = 0.0;
                for y in 7..27 {
                    for x in 5..15 {
                        roi += pixels[y * 40 + x];
                    }
                }
                let entry = expected.entry(frame.timestamp_ns / width).or_default();
                entry.0.push(roi / 200.0);
                entry.1.push(wave.iter().sum());
            }
            let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
            // Small chunks (a few frames each) and batches that do not divide the stream, on 1
            // and 3 partitions, and images written with streaming stores (on 2 partitions: every
            // frame, or all but the first two frames of each batch).
            let mut runs = Vec::new();
            for (partitions, cached_batch_bytes) in [(1, None), (3, None), (2, Some(0)), (2, Some(20_000))] {
                let config = PipelineConfig {
                    batch_size: 7,
                    chunk_bytes: 40_000,
                    cached_batch_bytes,
                    ..config(SourceConfig::Synthetic(source.clone()), partitions, arrays_graph())
                };
                let collect = run_collect(ctx, &config, Collect::default())?;
                check(
                    collect.bins.iter().map(|b| b.bin).eq(expected.keys().copied()),
                    format!(
                        "{partitions} partitions: bins {:?}",
                        collect.bins.iter().map(|b| b.bin).collect::<Vec<_>>()
                    ),
                )?;
                for bin in &collect.bins {
                    let (rois, waves) = &expected[&bin.bin];
                    for (name, values) in [("roi_chart", rois), ("wave_chart", waves)] {
                        let chart = &bin.values[name];
                        let got = chart["mean"].as_f64().unwrap_or(f64::NAN);
                        let want = mean(values);
                        check(
                            chart["count"] == json!(values.len()) && (got - want).abs() <= 1e-9 * (1.0 + want.abs()),
                            format!("{partitions} partitions, bin {} {name}: {chart} vs mean {want}", bin.bin),
                        )?;
                    }
                }
                runs.push(collect.bins);
            }
            check(
                runs[0].len() == runs[1].len()
                    && runs[0]
                        .iter()
                        .zip(&runs[1])
                        .all(|(a, b)| a.bin == b.bin && a.values.iter().all(|(k, v)| close(v, &b.values[k]))),
                "1 and 3 partitions agree",
            )?;
            Ok(())
        }),
        case("one_and_four_partitions_give_the_same_results", |ctx| {
            let one = run_collect(ctx, &config(synthetic(3000), 1, energy_graph()), Collect::default())?;
            let four = run_collect(ctx, &config(synthetic(3000), 4, energy_graph()), Collect::default())?;
            same_bins(&one.bins, &four.bins, 3000)
        }),
        case("the_cpu_of_sources_and_workers_is_counted_by_kind", |ctx| {
            // The same 256×256 image stream analysed by a scalar strip chart, then by the
            // standard deviation of every pixel: the workers' CPU per event follows the graph.
            let images = SourceConfig::Synthetic(SyntheticConfig {
                frames: Some(600),
                rate_hz: None,
                ..SyntheticConfig::images(256, 256)
            });
            let light = GraphSpec {
                nodes: vec![
                    NodeSpec::new("energy", "select", &[], json!({"field": "energy", "kind": "scalar"})),
                    NodeSpec::new("energy_chart", "strip_chart", &["energy"], json!({})),
                ],
                results: vec!["energy_chart".into()],
            };
            let heavy = GraphSpec {
                nodes: vec![
                    NodeSpec::new("img", "select", &[], json!({"field": "cspad", "kind": "image"})),
                    NodeSpec::new("spread", "std", &["img"], json!({})),
                    NodeSpec::new("spread_chart", "strip_chart", &["spread"], json!({})),
                ],
                results: vec!["spread_chart".into()],
            };
            let mut per_event = Vec::new();
            for graph in [light, heavy] {
                let process = cpu_time::ProcessTime::now();
                // Batches of 10 frames of 512 KiB: buffers the tests' Realm memory holds.
                let config = PipelineConfig {
                    batch_size: 10,
                    ..config(images.clone(), 2, graph)
                };
                let summary = ami_tasks::run(ctx, &config, None, &mut Collect::default())?;
                let process_ns = process.elapsed().as_nanos() as u64;
                let cpu = summary.task_cpu;
                check(
                    summary.events == 600 && cpu.source_ns > 0 && cpu.worker_ns > 0,
                    format!("{} events, {cpu:?}", summary.events),
                )?;
                // Their own work is part of what the process spent over the run, which the run
                // measured within this test's window around it.
                check(
                    cpu.source_ns + cpu.worker_ns <= summary.process_cpu_ns && summary.process_cpu_ns <= process_ns,
                    format!(
                        "{cpu:?} against {} ns for the process over the run, {process_ns} ns around it",
                        summary.process_cpu_ns
                    ),
                )?;
                per_event.push(cpu.per_event_us(summary.events).unwrap_or_default());
            }
            // 65,536 pixels read per event against one scalar.
            check(
                per_event[1].1 > 5.0 * per_event[0].1,
                format!(
                    "workers' µs per event: strip chart {:.2}, std of the image {:.2}",
                    per_event[0].1, per_event[1].1
                ),
            )?;
            // A paced source waits for its frames: waiting is not counted.
            let paced = SourceConfig::Synthetic(SyntheticConfig {
                frames: Some(100),
                rate_hz: Some(200.0),
                ..SyntheticConfig::scalars_only()
            });
            let started = std::time::Instant::now();
            let summary = ami_tasks::run(ctx, &config(paced, 1, energy_graph()), None, &mut Collect::default())?;
            let wall_ns = started.elapsed().as_nanos() as u64;
            check(
                summary.events == 100 && summary.task_cpu.source_ns < wall_ns / 4,
                format!(
                    "a 0.5 s stream: {} events, sources {} ns of CPU in {wall_ns} ns",
                    summary.events, summary.task_cpu.source_ns
                ),
            )?;
            Ok(())
        }),
        case("repeated_runs_give_their_stores_memory_back", |ctx| {
            // Each run's telemetry buffers take about 200 MiB (2 partitions × 2 buffers × 24
            // frames of 2 MiB); six runs need more than the process's 1 GiB of Realm memory unless
            // each run's stores are freed when it ends.
            for run in 0..6 {
                let source = SourceConfig::Synthetic(SyntheticConfig {
                    frames: Some(48),
                    rate_hz: None,
                    ..SyntheticConfig::images(512, 512)
                });
                let config = PipelineConfig {
                    batch_size: 24,
                    ..config(source, 2, energy_graph())
                };
                let summary = ami_tasks::run(ctx, &config, None, &mut Collect::default())?;
                check(summary.events == 48, format!("run {run}: {} events", summary.events))?;
            }
            Ok(())
        }),
        case("a_run_that_fails_part_way_gives_its_stores_memory_back_too", |ctx| {
            // As above, but each run ends with an error at its first report, rounds still in
            // flight: six of them would exhaust the 1 GiB unless the stores are freed then too.
            struct GiveUp;
            impl Observer for GiveUp {
                fn on_report(&mut self, _: &TaskContext, _: &Stores, _: &GlobalReport) -> Result<Flow, PipelineError> {
                    Err(PipelineError::Config("the observer gives up".into()))
                }
            }
            let source = || {
                SourceConfig::Synthetic(SyntheticConfig {
                    frames: Some(240),
                    rate_hz: None,
                    ..SyntheticConfig::images(512, 512)
                })
            };
            let sized = |source| PipelineConfig {
                batch_size: 24,
                ..config(source, 2, energy_graph())
            };
            for run in 0..6 {
                match ami_tasks::run(ctx, &sized(source()), None, &mut GiveUp) {
                    Err(PipelineError::Config(message)) if message.contains("gives up") => {}
                    other => return Err(TaskError::msg(format!("run {run}: {other:?}"))),
                }
            }
            let summary = ami_tasks::run(ctx, &sized(source()), None, &mut Collect::default())?;
            check(summary.events == 240, format!("after the failed runs: {} events", summary.events))
        }),
        case("a_tuned_batch_size_gives_the_same_results", |ctx| {
            // As fast as the sources go, the tuner measures batches of 16 for 0.4 s, then probes
            // 32 or 8: rounds of several sizes, whichever it keeps.
            let fixed = run_collect(ctx, &config(synthetic(4_000), 2, energy_graph()), Collect::default())?;
            let tuned_config = PipelineConfig {
                batch_size: 16,
                max_batch_size: Some(1024),
                ..config(synthetic(4_000), 2, energy_graph())
            };
            let mut tuned = Collect::default();
            let summary = ami_tasks::run(ctx, &tuned_config, None, &mut tuned)?;
            let ladder = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
            check(
                summary.rounds_by_batch_size.len() > 1
                    && summary.rounds_by_batch_size.keys().all(|s| ladder.contains(s))
                    && summary.rounds_by_batch_size.values().sum::<u64>() == summary.rounds,
                format!("rounds by batch size: {:?}", summary.rounds_by_batch_size),
            )?;
            same_bins(&fixed.bins, &tuned.bins, 4_000)
        }),
        case("reductions_over_several_rounds_give_the_same_results", |ctx| {
            // Batches of 10: 150 rounds of 2 partitions. A long interval lets the pace reach 8
            // rounds per reduction as soon as it has measured a rate.
            let paced = |max_rounds| PipelineConfig {
                batch_size: 10,
                max_rounds_per_reduction: max_rounds,
                reduction_interval_us: 10_000_000,
                ..config(synthetic(3000), 2, energy_graph())
            };
            let every = run_collect(ctx, &paced(1), Collect::default())?;
            let batched = run_collect(ctx, &paced(8), Collect::default())?;
            check(every.reports >= 150, format!("{} reports reducing every round", every.reports))?;
            check(
                batched.reports < every.reports / 4,
                format!(
                    "{} reports with up to 8 rounds a reduction, {} with 1",
                    batched.reports, every.reports
                ),
            )?;
            same_bins(&every.bins, &batched.bins, 3000)
        }),
        case("graph_change_mid_stream", |ctx| {
            let mut second = energy_graph();
            second
                .nodes
                .push(NodeSpec::new("doubled", "mul", &["energy"], json!({"constant": 2.0})));
            second
                .nodes
                .push(NodeSpec::new("doubled_chart", "strip_chart", &["doubled"], json!({})));
            second.results = vec!["doubled_chart".into()];
            let mut cfg = config(synthetic(6000), 2, energy_graph());
            cfg.window = 1;
            let collect = run_collect(ctx, &cfg, Collect::switching_after(3, second))?;
            let switched = collect.switched_at_bin.ok_or_else(|| TaskError::msg("graph never switched"))?;
            let first_version = collect.bins[0].graph_version;
            let versions: Vec<u64> = collect.bins.iter().map(|b| b.graph_version).collect();
            check(versions.windows(2).all(|w| w[0] <= w[1]), format!("versions go back: {versions:?}"))?;
            for bin in collect.bins.iter().filter(|b| b.bin <= switched) {
                check(
                    bin.graph_version == first_version && bin.values.contains_key("energy_chart"),
                    format!("bin {} before the change", bin.bin),
                )?;
            }
            let last = collect.bins.last().ok_or_else(|| TaskError::msg("no bins"))?;
            check(
                last.graph_version == first_version + 1 && last.values.contains_key("doubled_chart"),
                format!("last bin {last:?}"),
            )
        }),
        case("results_keep_the_newest_retained_bins_across_a_graph_change", |ctx| {
            // 120 bins of two results, then of one other: Results must end up holding exactly
            // the newest 5 bins, under the names each was published with.
            let mut second = energy_graph();
            second.results = vec!["energy_hist".into()];
            let cfg = PipelineConfig {
                retained_bins: 5,
                window: 1,
                ..config(synthetic(6000), 2, energy_graph())
            };
            let collect = run_collect(ctx, &cfg, Collect::switching_after(3, second))?;
            check(collect.bins.len() > 100, format!("{} bins", collect.bins.len()))?;
            holds_the_newest_bins(&collect, 5)?;
            check(
                collect.stored.keys().any(|key| key.contains("energy_chart")),
                "the first graph's results were never written",
            )
        }),
        case("results_keep_the_newest_retained_bins_across_a_restart", |ctx| {
            // A service restarted from its data directory: Results comes back from disk, and the
            // bins it holds still count against the retention (they were never deleted before).
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pipeline-retention-restart");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let cfg = |frames| PipelineConfig {
                retained_bins: 5,
                ..config(synthetic(frames), 2, energy_graph())
            };
            let mut first = Collect::default();
            ami_tasks::run(ctx, &cfg(3000), Some(&dir), &mut first)?;
            let mut second = Collect::default();
            ami_tasks::run(ctx, &cfg(6000), Some(&dir), &mut second)?;
            check(
                first.bins.len() > 40 && second.bins.len() > 40,
                format!("{} and {} bins", first.bins.len(), second.bins.len()),
            )?;
            holds_the_newest_bins(&second, 5)
        }),
        case("results_too_small_for_the_values_drops_the_oldest_bins_instead_of_failing", |ctx| {
            // Four histograms of 65,536 bins are about 520 KB of JSON a bin; Results is sized
            // for 5 retained bins of small values (1.5 MiB), so it holds only a few of them.
            let mut graph = energy_graph();
            graph.nodes.truncate(1);
            for h in 0..4 {
                graph.nodes.push(NodeSpec::new(
                    &format!("hist{h}"),
                    "histogram",
                    &["energy"],
                    json!({"bins": ami_tasks::graph::MAX_BINS, "low": 0.0, "high": 10.0 + h as f64}),
                ));
            }
            graph.results = (0..4).map(|h| format!("hist{h}")).collect();
            let cfg = PipelineConfig {
                retained_bins: 5,
                ..config(synthetic(3000), 2, graph)
            };
            let mut collect = Collect::default();
            let summary = ami_tasks::run(ctx, &cfg, None, &mut collect)?;
            check(summary.events == 3000, format!("{} events", summary.events))?;
            check(summary.bins_dropped_early > 0, "no bin dropped early")?;
            check(
                summary
                    .incidents
                    .iter()
                    .filter(|i| i.kind == ami_tasks::robust::IncidentKind::ResultsFull)
                    .count()
                    == 1,
                format!("one results_full incident expected: {:?}", summary.incidents),
            )?;
            let newest = collect.bins.last().ok_or_else(|| TaskError::msg("no bins"))?.bin;
            let held = &collect.latest_keys;
            let bins_held: std::collections::BTreeSet<&str> = held.iter().filter_map(|key| key.rsplit('/').next()).collect();
            check(
                !held.is_empty() && bins_held.len() < 5 && held.contains(&result_key("hist0", newest)),
                format!("Results holds {held:?}, newest bin {newest}"),
            )
        }),
        case("control_keeps_the_newest_incidents_however_many_come", |ctx| {
            // More incidents than the /incident/ segment holds (4096 keys), in batches, one of
            // them larger than the bound: Control keeps the newest KEPT_INCIDENTS, and so does
            // the summary; a log opened later (a restart) takes over what Control holds.
            use ami_tasks::incident_log::{IncidentLog, KEPT_INCIDENTS};
            use ami_tasks::robust::{Incident, IncidentKind};
            let stores = small_stores(ctx)?;
            let mut log = IncidentLog::open(ctx, &stores)?;
            let mut summary = ami_tasks::RunSummary::default();
            let mut made = 0;
            let batch = |n: usize, made: &mut usize| -> Vec<Incident> {
                (0..n)
                    .map(|_| {
                        *made += 1;
                        Incident::new("source/0", IncidentKind::Error, 1, format!("failure {made}"))
                    })
                    .collect()
            };
            for n in [900, 1500, 3000, 7] {
                let incidents = batch(n, &mut made);
                log.record(ctx, &stores, incidents, &mut summary)?;
            }
            let held = stores.control.list(ctx, "/incident/")?;
            check(held.len() == KEPT_INCIDENTS, format!("{} incidents in Control", held.len()))?;
            let newest = stores.control.get(ctx, held.last().expect("incidents"))?.unwrap_or(Value::Null);
            check(newest["message"] == json!(format!("failure {made}")), format!("newest {newest}"))?;
            let messages: std::collections::BTreeSet<String> = held
                .iter()
                .map(|key| {
                    Ok(stores.control.get(ctx, key)?.unwrap_or(Value::Null)["message"]
                        .as_str()
                        .unwrap_or("")
                        .to_string())
                })
                .collect::<Result<_, TaskError>>()?;
            let expected: std::collections::BTreeSet<String> = (made - KEPT_INCIDENTS + 1..=made).map(|k| format!("failure {k}")).collect();
            check(messages == expected, "Control does not hold exactly the newest incidents")?;
            check(
                summary.incidents.len() == KEPT_INCIDENTS && summary.incidents_total == made as u64,
                format!("summary {} of {}", summary.incidents.len(), summary.incidents_total),
            )?;
            let mut reopened = IncidentLog::open(ctx, &stores)?;
            let incidents = batch(10, &mut made);
            reopened.record(ctx, &stores, incidents, &mut summary)?;
            let held = stores.control.list(ctx, "/incident/")?;
            check(held.len() == KEPT_INCIDENTS, format!("{} incidents after reopening", held.len()))
        }),
        case("control_keeps_the_newest_graph_versions_and_their_marks", |ctx| {
            // 70 versions installed, the first 8 marked bad: the 6 pushed out of the 64 kept go
            // with their marks.
            use ami_tasks::graph_manager::RETAINED_GRAPH_VERSIONS;
            use ami_tasks::stores::{bad_graph_key, graph_key};
            let stores = small_stores(ctx)?;
            for version in 1..=70u64 {
                check(install_graph(ctx, &stores, &energy_graph())? == version, "versions count up")?;
                if version <= 8 {
                    stores
                        .control
                        .put(ctx, &bad_graph_key(version), &json!({"graph_version": version}))?;
                }
            }
            let oldest_kept = 70 - RETAINED_GRAPH_VERSIONS + 1;
            for version in 1..=70u64 {
                let kept = version >= oldest_kept;
                check(
                    stores.control.get(ctx, &graph_key(version))?.is_some() == kept,
                    format!("graph version {version} kept: {}", !kept),
                )?;
                check(
                    stores.control.get(ctx, &bad_graph_key(version))?.is_some() == (kept && version <= 8),
                    format!("bad mark of version {version}"),
                )?;
            }
            Ok(())
        }),
        case("a_graph_that_cannot_be_installed_leaves_nothing_of_its_version", |ctx| {
            // `install_graph` (what `ami2 run --graph` does at start) when Control's log cannot be
            // written (a folder in its place): an error, and no part of the version in Control,
            // as for a version the graph manager cannot write.
            use ami_tasks::graph_manager::made_graph_key;
            use ami_tasks::stores::{graph_key, GRAPH_VERSION_KEY};
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("install-graph-fails");
            let _ = std::fs::remove_dir_all(&dir);
            let (stores, _) = Stores::create(ctx, &small_sizes(), Some(&dir))?;
            check(install_graph(ctx, &stores, &energy_graph())? == 1, "the first version is 1")?;
            let log = kv_region::persist::SegmentFiles::new(&dir.join("control"), "/control/").log;
            check(log.is_file(), format!("no log {}", log.display()))?;
            std::fs::remove_file(&log)?;
            std::fs::create_dir(&log)?;
            let mut other = energy_graph();
            other.results.truncate(1);
            let result = install_graph(ctx, &stores, &other);
            for key in [graph_key(2), made_graph_key(2)] {
                check(stores.control.get(ctx, &key)?.is_none(), format!("{key} is readable"))?;
            }
            check(stores.control.get(ctx, GRAPH_VERSION_KEY)? == Some(json!(1)), "the version moved")?;
            match result {
                Err(PipelineError::GraphNotWritten(why)) => check(why.contains("writing graph version 2 to Control"), why)?,
                other => return Err(TaskError::msg(format!("not refused as a version not written: {other:?}"))),
            }
            // With the log back, the same graph is installed as version 2.
            std::fs::remove_dir(&log)?;
            check(install_graph(ctx, &stores, &other)? == 2, "version 2 once the log is back")?;
            check(stores.control.get(ctx, &graph_key(2))?.is_some(), "version 2 has its graph")?;
            stores.destroy(ctx);
            Ok(())
        }),
        case("graph_failing_at_run_time_is_reverted_and_reported", |ctx| {
            // Compiles (the field is declared an image) but fails on every event: `energy` is a scalar.
            let broken = GraphSpec {
                nodes: vec![
                    NodeSpec::new("img", "select", &[], json!({"field": "energy", "kind": "image"})),
                    NodeSpec::new("total", "sum", &["img"], json!({})),
                ],
                results: vec!["total".into()],
            };
            let mut cfg = config(synthetic(6000), 2, energy_graph());
            cfg.window = 1;
            let mut breaker = Breaker {
                inner: Collect::default(),
                broken,
                incidents: 0,
            };
            let summary = ami_tasks::run(ctx, &cfg, None, &mut breaker)?;
            check(!summary.graph_failures.is_empty(), "no failure reported")?;
            check(
                summary.graph_failures.iter().all(|f| f.version == 2),
                format!("{:?}", summary.graph_failures),
            )?;
            check(breaker.incidents > 0, "no incident in the control store")?;
            check(
                summary
                    .incidents
                    .iter()
                    .any(|i| i.kind == ami_tasks::robust::IncidentKind::GraphFailure && i.component.starts_with("worker/")),
                format!("no graph_failure incident in {:?}", summary.incidents),
            )?;
            let last = breaker.inner.bins.last().ok_or_else(|| TaskError::msg("no bins"))?;
            check(
                last.graph_version == 1 && last.values.contains_key("energy_chart"),
                format!("after the failure: {last:?}"),
            )?;
            let total: u64 = breaker.inner.bins.iter().map(|b| b.events).sum();
            check(total == 6000, format!("{total} events in bins: events lost in the revert"))
        }),
        case(
            "another_partition_count_continues_where_the_sources_stopped_even_after_a_crash_in_the_conversion",
            |ctx| {
                let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pipeline-partition-change");
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)?;
                // 3 partitions, stopped after a few reports.
                let first = ami_tasks::run(ctx, &config(synthetic(6000), 3, energy_graph()), Some(&dir), &mut StopAfter(3))?;
                check(
                    first.events > 0 && first.events < 6000,
                    format!("{} events before the stop", first.events),
                )?;
                // The conversion to 4 was written, and the new states of partitions 0 and 1 only:
                // 2 and 3 have none, and the states that are there are all of 4 partitions.
                interrupted_conversion(ctx, &dir, 4, 2)?;
                let mut rest = Collect::default();
                let second = ami_tasks::run(ctx, &config(synthetic(6000), 4, energy_graph()), Some(&dir), &mut rest)?;
                check(
                    first.events + second.events == 6000,
                    format!("{} + {} events: frames lost or analysed twice", first.events, second.events),
                )?;
                let announced = second
                    .incidents
                    .iter()
                    .find(|i| i.kind == ami_tasks::robust::IncidentKind::PartitionsChanged);
                check(
                    announced.is_some_and(|i| i.message.starts_with("partitions changed from 3 to 4")),
                    format!("{:?}", second.incidents),
                )?;
                // Again with as many partitions: nothing to convert, nothing announced.
                let third = ami_tasks::run(
                    ctx,
                    &config(synthetic(6000), 4, energy_graph()),
                    Some(&dir),
                    &mut Collect::default(),
                )?;
                check(
                    third.events == 0 && third.incidents.is_empty(),
                    format!("{} events, {:?}", third.events, third.incidents),
                )
            },
        ),
    ];
    run(&[], cases)
}
