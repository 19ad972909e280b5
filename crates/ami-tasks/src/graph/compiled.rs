//! Validation and compilation of a [`GraphSpec`] into a [`CompiledGraph`], and per-event
//! evaluation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::accum::{Accumulator, Partials};
use super::ops::{self, Arg, Op};
use super::spec::{EvalError, GraphError, GraphSpec};
use super::value::{Ty, Value};
use super::MAX_RESULTS;
use crate::event::Event;

/// Graphs with at most this many evaluated nodes keep their per-event values on the stack.
const INLINE_SLOTS: usize = 32;

/// A validated graph, ready to evaluate events: the nodes some result depends on, in topological
/// order, with their inputs as indices into a per-event slot array.
#[derive(Debug)]
pub struct CompiledGraph {
    spec: GraphSpec,
    result_names: Vec<String>,
    nodes: Vec<Node>,
    sinks: Vec<Sink>,
    fingerprint: u32,
}

#[derive(Debug)]
struct Node {
    id: String,
    op: Op,
    /// Slots of the inputs (all before this node's own slot).
    inputs: Vec<usize>,
    /// Per input: this node is its only consumer, so it may move the value out of its slot.
    take: Vec<bool>,
    /// Whether the node works on images (for messages).
    image: bool,
    /// `select`: where the field was in the last frame; frames usually keep one layout.
    field_hint: AtomicUsize,
}

/// What a result accumulates: its accumulator template and the slots it reads.
#[derive(Debug)]
struct Sink {
    name: String,
    empty: Accumulator,
    inputs: Vec<usize>,
}

/// Validates `spec` and compiles it. On failure, returns every problem found (it never panics,
/// whatever the input).
pub fn compile(spec: &GraphSpec) -> Result<CompiledGraph, Vec<GraphError>> {
    let mut errors = Vec::new();
    let n = spec.nodes.len();

    // Ids: non-empty and unique; inputs and results refer to the first node with an id.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, node) in spec.nodes.iter().enumerate() {
        if node.id.is_empty() {
            errors.push(GraphError::node("", format!("node #{i} (op `{}`) has an empty id", node.op)));
        } else if index.contains_key(node.id.as_str()) {
            errors.push(GraphError::node(&node.id, "duplicate id: another node has the same id"));
        } else {
            index.insert(&node.id, i);
        }
    }

    // Ops and params, input counts, input references.
    let mut parsed: Vec<Option<Op>> = Vec::with_capacity(n);
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut inputs_ok = vec![true; n];
    for (i, node) in spec.nodes.iter().enumerate() {
        match ops::parse(&node.op, &node.params) {
            Ok(op) => parsed.push(Some(op)),
            Err(messages) => {
                errors.extend(messages.into_iter().map(|m| GraphError::node(&node.id, m)));
                parsed.push(None);
            }
        }
        if let Some(arity) = ops::arity(&node.op, &node.params) {
            if node.inputs.len() != arity {
                inputs_ok[i] = false;
                let expected = match (node.op.as_str(), arity) {
                    ("add" | "sub" | "mul" | "div", 1) => "1 input (it has a `constant`)".to_string(),
                    ("add" | "sub" | "mul" | "div", _) => "2 inputs (or 1 input and a `constant` parameter)".to_string(),
                    ("binned_mean", _) => "2 inputs [value, scan]".to_string(),
                    (_, 0) => "no inputs".to_string(),
                    (_, 1) => "1 input".to_string(),
                    (_, k) => format!("{k} inputs"),
                };
                errors.push(GraphError::node(
                    &node.id,
                    format!("wrong number of inputs: `{}` takes {expected}, got {}", node.op, node.inputs.len()),
                ));
            }
        }
        for input in &node.inputs {
            match index.get(input.as_str()) {
                Some(&j) => {
                    edges[i].push(j);
                    if ops::is_accumulating(&spec.nodes[j].op) {
                        inputs_ok[i] = false;
                        errors.push(GraphError::node(
                            &node.id,
                            format!(
                                "input `{input}` is a `{}`, an accumulating op: its value exists only as a result and cannot feed other nodes",
                                spec.nodes[j].op
                            ),
                        ));
                    }
                }
                None => {
                    inputs_ok[i] = false;
                    errors.push(GraphError::node(&node.id, format!("input `{input}` is not a node of the graph")));
                }
            }
        }
    }

    // Cycles: one error per strongly connected component.
    let mut in_cycle = vec![false; n];
    for scc in cycles(&edges) {
        scc.iter().for_each(|&i| in_cycle[i] = true);
        let members: Vec<String> = scc.iter().map(|&i| format!("`{}`", spec.nodes[i].id)).collect();
        let message = if scc.len() == 1 {
            "cycle: the node is its own input".to_string()
        } else {
            format!("cycle among nodes {}", members.join(", "))
        };
        errors.push(GraphError::node(&spec.nodes[scc[0]].id, message));
    }

    // Types in topological order. A node whose inputs or params are broken, or that lies on or
    // after a cycle, gets no type, and its consumers are not checked (no cascades of errors).
    let order = topological_order(&edges, &in_cycle);
    let mut types: Vec<Option<Ty>> = vec![None; n];
    for &i in &order {
        let node = &spec.nodes[i];
        let Some(op) = &parsed[i] else { continue };
        if !inputs_ok[i] {
            continue;
        }
        let inputs: Option<Vec<(&str, Ty)>> = edges[i].iter().map(|&j| types[j].map(|t| (spec.nodes[j].id.as_str(), t))).collect();
        let Some(inputs) = inputs else { continue };
        match ops::infer(op, &node.op, &inputs) {
            Ok(t) => types[i] = Some(t),
            Err(messages) => errors.extend(messages.into_iter().map(|m| GraphError::node(&node.id, m))),
        }
    }

    // Results.
    if spec.results.is_empty() {
        errors.push(GraphError::graph(
            "the graph has no results: list at least one node id in `results`",
        ));
    }
    if spec.results.len() > MAX_RESULTS {
        errors.push(GraphError::graph(format!(
            "the graph publishes {} results; at most {MAX_RESULTS} (the Results store is sized for {MAX_RESULTS} per bin)",
            spec.results.len()
        )));
    }
    let mut result_nodes = Vec::with_capacity(spec.results.len());
    for (k, name) in spec.results.iter().enumerate() {
        if spec.results[..k].contains(name) {
            errors.push(GraphError::node(name, "listed twice in results"));
        } else {
            match index.get(name.as_str()) {
                Some(&i) => result_nodes.push(i),
                None => errors.push(GraphError::node(name, "listed in results, but the graph has no node with this id")),
            }
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    build(spec, &parsed, &edges, &types, &order, &result_nodes).map_err(|e| vec![e])
}

/// Builds the evaluation plan of a valid graph.
fn build(
    spec: &GraphSpec,
    parsed: &[Option<Op>],
    edges: &[Vec<usize>],
    types: &[Option<Ty>],
    order: &[usize],
    result_nodes: &[usize],
) -> Result<CompiledGraph, GraphError> {
    let n = spec.nodes.len();
    let internal = |what: &str| GraphError::graph(format!("internal error while compiling: {what}"));
    let op_of = |i: usize| parsed[i].as_ref().ok_or_else(|| internal("unparsed op"));
    let ty_of = |i: usize| types[i].ok_or_else(|| internal("untyped node"));

    // Only the nodes some result needs are evaluated; accumulating ops are sinks, not nodes.
    let mut needed = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    for &r in result_nodes {
        if ops::is_accumulating(&spec.nodes[r].op) {
            stack.extend(&edges[r]);
        } else {
            stack.push(r);
        }
    }
    while let Some(i) = stack.pop() {
        if !needed[i] {
            needed[i] = true;
            stack.extend(&edges[i]);
        }
    }
    let mut slot = vec![usize::MAX; n];
    let evaluated: Vec<usize> = order.iter().copied().filter(|&i| needed[i]).collect();
    evaluated.iter().enumerate().for_each(|(s, &i)| slot[i] = s);

    let mut sinks = Vec::with_capacity(result_nodes.len());
    for &r in result_nodes {
        let (empty, inputs) = match (op_of(r)?, ty_of(r)?) {
            (Op::Histogram(b), _) => (Accumulator::histogram(*b), edges[r].iter().map(|&j| slot[j]).collect()),
            (Op::BinnedMean(b), _) => (Accumulator::binned_mean(*b), edges[r].iter().map(|&j| slot[j]).collect()),
            (Op::StripChart, _) => (Accumulator::strip_chart(), edges[r].iter().map(|&j| slot[j]).collect()),
            (_, Ty::Scalar) => (Accumulator::scalar(), vec![slot[r]]),
            (_, Ty::Waveform { len }) => (Accumulator::array(false, len.map(|l| (l, 1))), vec![slot[r]]),
            (_, Ty::Image { width, height }) => (Accumulator::array(true, width.zip(height)), vec![slot[r]]),
            (_, Ty::Accumulated) => return Err(internal("accumulated type of a non-accumulating op")),
        };
        sinks.push(Sink {
            name: spec.nodes[r].id.clone(),
            empty,
            inputs,
        });
    }

    // A value may be moved out of its slot only by its single consumer, and never if a result
    // reads it at the end of the event.
    let mut uses = vec![0usize; evaluated.len()];
    for &i in &evaluated {
        edges[i].iter().for_each(|&j| uses[slot[j]] += 1);
    }
    for sink in &sinks {
        sink.inputs.iter().for_each(|&s| uses[s] += 2);
    }

    let mut nodes = Vec::with_capacity(evaluated.len());
    for &i in &evaluated {
        let inputs: Vec<usize> = edges[i].iter().map(|&j| slot[j]).collect();
        let image = edges[i].iter().chain([&i]).any(|&j| matches!(types[j], Some(Ty::Image { .. })));
        nodes.push(Node {
            id: spec.nodes[i].id.clone(),
            op: op_of(i)?.clone(),
            take: inputs.iter().map(|&s| uses[s] == 1).collect(),
            inputs,
            image,
            field_hint: AtomicUsize::new(0),
        });
    }
    if nodes.iter().enumerate().any(|(s, node)| node.inputs.iter().any(|&j| j >= s))
        || sinks.iter().any(|k| k.inputs.iter().any(|&j| j >= nodes.len()))
    {
        return Err(internal("inputs out of order"));
    }

    Ok(CompiledGraph {
        spec: spec.clone(),
        result_names: sinks.iter().map(|s| s.name.clone()).collect(),
        fingerprint: crc32fast::hash(&serde_json::to_vec(spec).unwrap_or_default()),
        nodes,
        sinks,
    })
}

/// Strongly connected components that form cycles (more than one node, or a self-loop), each
/// in spec order. Iterative Tarjan: deep graphs must not overflow the stack.
fn cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next = 0;
    let mut out = Vec::new();
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut calls: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&(v, e)) = calls.last() {
            if let Some(&w) = edges[v].get(e) {
                if let Some(top) = calls.last_mut() {
                    top.1 += 1;
                }
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(u, _)) = calls.last() {
                low[u] = low[u].min(low[v]);
            }
            if low[v] == index[v] {
                let mut scc = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    scc.push(w);
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 || edges[v].contains(&v) {
                    scc.sort_unstable();
                    out.push(scc);
                }
            }
        }
    }
    out.sort();
    out
}

/// Kahn's order of the nodes not on or after a cycle, ties broken by spec order.
fn topological_order(edges: &[Vec<usize>], in_cycle: &[bool]) -> Vec<usize> {
    let n = edges.len();
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut pending = vec![0usize; n];
    for (i, inputs) in edges.iter().enumerate() {
        for &j in inputs {
            consumers[j].push(i);
            pending[i] += 1;
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|&i| pending[i] == 0 && !in_cycle[i]).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &c in &consumers[i] {
            pending[c] -= 1;
            if pending[c] == 0 && !in_cycle[c] {
                ready.insert(c);
            }
        }
    }
    order
}

impl CompiledGraph {
    /// The graph this was compiled from.
    pub fn spec(&self) -> &GraphSpec {
        &self.spec
    }

    /// The result names, in the order of `spec().results`.
    pub fn result_names(&self) -> &[String] {
        &self.result_names
    }

    /// Partials with no events, to pass to [`process`](Self::process) and merge into.
    pub fn empty_partials(&self) -> Partials {
        Partials::new(
            self.fingerprint,
            self.sinks.iter().map(|s| (s.name.clone(), s.empty.clone())).collect(),
        )
    }

    /// Adds one event's contribution to `partials` (which came from `empty_partials` of this
    /// graph). On error (a missing or mismatched field, an out-of-bounds roi on an array of
    /// undeclared shape, a shape change within a bin, ...) `partials` is left unchanged.
    pub fn process<E: Event + ?Sized>(&self, frame: &E, partials: &mut Partials) -> Result<(), EvalError> {
        if partials.graph() != self.fingerprint || partials.len() != self.sinks.len() {
            return Err(EvalError::new("", "the partials come from a different graph"));
        }
        // Slot arrays sized to the graph: initializing and dropping unused slots is not free.
        match self.nodes.len() {
            0..=4 => self.run_inline::<4, E>(frame, partials),
            5..=8 => self.run_inline::<8, E>(frame, partials),
            9..=16 => self.run_inline::<16, E>(frame, partials),
            17..=INLINE_SLOTS => self.run_inline::<INLINE_SLOTS, E>(frame, partials),
            n => {
                let mut slots = Vec::with_capacity(n);
                slots.resize_with(n, || None);
                self.run(frame, &mut slots, partials)
            }
        }
    }

    fn run_inline<const N: usize, E: Event + ?Sized>(&self, frame: &E, partials: &mut Partials) -> Result<(), EvalError> {
        let mut slots: [Option<Value<'_>>; N] = [const { None }; N];
        let n = self.nodes.len().min(N);
        self.run(frame, &mut slots[..n], partials)
    }

    fn run<'a, E: Event + ?Sized>(&self, frame: &'a E, slots: &mut [Option<Value<'a>>], partials: &mut Partials) -> Result<(), EvalError> {
        for (s, node) in self.nodes.iter().enumerate() {
            let value = self.eval(node, frame, slots, s).map_err(|m| EvalError::new(&node.id, m))?;
            if let Some(slot) = slots.get_mut(s) {
                *slot = value;
            }
        }
        // Check every result before touching any: an event counts fully or not at all.
        let value = |s: usize| slots.get(s).and_then(Option::as_ref);
        for (sink, acc) in self.sinks.iter().zip(partials.accumulators()) {
            if let Some(v) = sink.inputs.first().and_then(|&s| value(s)) {
                acc.check(v).map_err(|m| EvalError::new(&sink.name, m))?;
            }
        }
        partials.add_event(|k, acc| {
            let Some(sink) = self.sinks.get(k) else { return };
            let first = sink.inputs.first().and_then(|&s| value(s));
            let second = sink.inputs.get(1).and_then(|&s| value(s));
            // A filtered input (no value) skips the event for this result.
            if let Some(first) = first {
                if sink.inputs.len() < 2 || second.is_some() {
                    acc.add(first, second);
                }
            }
        });
        Ok(())
    }

    fn eval<'a, E: Event + ?Sized>(
        &self,
        node: &Node,
        frame: &'a E,
        slots: &mut [Option<Value<'a>>],
        s: usize,
    ) -> Result<Option<Value<'a>>, String> {
        let (before, _) = slots.split_at_mut(s.min(slots.len()));
        let mut owned: [Option<Value<'a>>; 2] = [None, None];
        for (k, (&j, &take)) in node.inputs.iter().zip(&node.take).enumerate().take(2) {
            if take {
                owned[k] = before.get_mut(j).and_then(Option::take);
            }
        }
        let before = &*before;
        let mut args: [Option<Arg<'_, 'a>>; 2] = [None, None];
        for (k, (&j, &take)) in node.inputs.iter().zip(&node.take).enumerate().take(2) {
            let arg = if take {
                owned[k].take().map(Arg::Owned)
            } else {
                before.get(j).and_then(Option::as_ref).map(Arg::Ref)
            };
            match arg {
                Some(arg) => args[k] = Some(arg),
                // An input filtered out for this event: so is this node.
                None => return Ok(None),
            }
        }
        let field = match &node.op {
            Op::Select { field, .. } => self.find_field(node, frame, field),
            _ => usize::MAX,
        };
        ops::eval(&node.op, node.image, frame, field, args)
    }

    fn find_field<E: Event + ?Sized>(&self, node: &Node, frame: &E, field: &str) -> usize {
        let hint = node.field_hint.load(Ordering::Relaxed);
        if frame.field_is(hint, field) {
            return hint;
        }
        match (0..frame.field_count()).position(|i| frame.field_is(i, field)) {
            Some(i) => {
                node.field_hint.store(i, Ordering::Relaxed);
                i
            }
            None => usize::MAX,
        }
    }
}
