//! What the benchmarks share.

use ami_tasks::graph::{GraphSpec, NodeSpec};
use serde_json::json;

/// The image benchmark's graph: the mean of a 256×256 region of interest of the 512×512 image
/// `cspad`, as a strip chart.
pub fn roi_graph() -> GraphSpec {
    GraphSpec {
        nodes: vec![
            NodeSpec::new(
                "img",
                "select",
                &[],
                json!({"field": "cspad", "kind": "image", "width": 512, "height": 512}),
            ),
            NodeSpec::new("roi", "roi", &["img"], json!({"x0": 128, "y0": 128, "x1": 384, "y1": 384})),
            NodeSpec::new("roi_mean", "mean", &["roi"], json!({})),
            NodeSpec::new("roi_chart", "strip_chart", &["roi_mean"], json!({})),
        ],
        results: vec!["roi_chart".into()],
    }
}
