//! A cheaper exit head: logits over a vocabulary shortlist instead of the whole vocabulary.
//!
//! The exit head's LM head is the biggest matrix the edge reads per token (49,152 × 576 on
//! SmolLM2, a third of the edge's weight bytes). Calibration picks the tokens the exit head may
//! answer; this rewrite of an exported edge graph makes that head multiply by those rows only
//! and scatter the `K` logits into a full-vocabulary row of −∞. The output keeps its name and
//! shape, so the runtime, sampling and the exit decision see an ordinary logit row in which
//! every other token has probability 0.
//!
//! The rewrite clones the nodes between the head's final norm and its logits (whatever form
//! the LM head was exported in: a dense `MatMul`, `MatMulNBits`, with or without the Q4_1
//! block-offset correction), points the clones at row-selected copies of the LM head's
//! initializers, and then drops whatever no longer feeds an output (the full LM head, unless
//! another exit still reads it).

use std::collections::{HashMap, HashSet};

use collm_onnx::proto::{AttributeProto, GraphProto, NodeProto, attribute_type};
use collm_onnx::{ModelProto, TensorProto};

use super::{layers::NBITS_OP, names};
use crate::{Error, Result};

/// Names of the LM head's initializers as the exporter declares them.
const DENSE: &str = "lm_head";
const QWEIGHT: &str = "lm_head.qweight";
const SCALES: &str = "lm_head.scales";
const OFFSETS: &str = "lm_head.block_offsets";

fn err(msg: impl Into<String>) -> Error {
    Error::Manifest(format!("shortlist exit head: {}", msg.into()))
}

/// Rewrites the exit head after `layer` to compute logits for `ids` (ascending, distinct, all
/// below `vocab`) only.
pub fn shortlist_exit(
    model: &mut ModelProto,
    layer: usize,
    ids: &[u32],
    vocab: usize,
) -> Result<()> {
    if ids.is_empty()
        || ids.windows(2).any(|w| w[0] >= w[1])
        || ids[ids.len() - 1] as usize >= vocab
    {
        return Err(err(format!(
            "{} ids must be ascending, distinct and below {vocab}",
            ids.len()
        )));
    }
    let graph = model.graph.as_mut().ok_or_else(|| err("the model has no graph"))?;
    let output = names::exit_logits(layer);
    let identity = graph
        .node
        .iter()
        .position(|n| n.output.first() == Some(&output))
        .ok_or_else(|| err(format!("no node produces {output}")))?;
    let logits =
        graph.node[identity].input.first().cloned().ok_or_else(|| err("bad output node"))?;
    let producers: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    // The node that multiplies by the LM head, and the normalised state it reads.
    let ancestors = ancestors(graph, &producers, &logits);
    let matmul = ancestors
        .iter()
        .copied()
        .find(|&i| matches!(graph.node[i].input.get(1).map(String::as_str), Some(DENSE | QWEIGHT)))
        .ok_or_else(|| err(format!("{logits} is not computed from the LM head")))?;
    let state = graph.node[matmul].input[0].clone();
    let chain: Vec<usize> = {
        let from_state = descendants(graph, &state);
        let mut c: Vec<usize> = ancestors.intersection(&from_state).copied().collect();
        c.sort_unstable();
        c
    };

    let prefix = format!("exit.{layer}.shortlist");
    let renamed = shortlisted_initializers(graph, ids, &prefix)?;
    let suffix = "/shortlist";
    let mut new_nodes: Vec<NodeProto> = chain
        .iter()
        .map(|&i| {
            let mut n = graph.node[i].clone();
            n.name.push_str(suffix);
            for input in &mut n.input {
                if let Some(r) = renamed.get(input.as_str()) {
                    *input = r.clone();
                } else if chain.iter().any(|&j| graph.node[j].output.contains(input)) {
                    input.push_str(suffix);
                }
            }
            n.output.iter_mut().for_each(|o| o.push_str(suffix));
            if n.op_type == NBITS_OP {
                set_int_attr(&mut n, "N", ids.len() as i64);
            }
            n
        })
        .collect();
    let short_logits = format!("{logits}{suffix}");

    // Scatter the K logits into a [1, count, V] row of −∞.
    let value = |s: &str| format!("{prefix}/{s}");
    let ids3: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    graph.initializer.extend([
        TensorProto::i64(&value("ids"), &[1, 1, ids.len() as i64], &ids3),
        TensorProto::f32(&value("impossible"), &[], &[f32::NEG_INFINITY]),
        TensorProto::i64(&value("lead_start"), &[1], &[0]),
        TensorProto::i64(&value("lead_end"), &[1], &[2]),
        TensorProto::i64(&value("vocab"), &[1], &[vocab as i64]),
    ]);
    let node = |op: &str, inputs: &[String], out: &str, attrs: Vec<AttributeProto>| NodeProto {
        input: inputs.to_vec(),
        output: vec![value(out)],
        name: value(out),
        op_type: op.to_string(),
        domain: String::new(),
        attribute: attrs,
    };
    let axis = AttributeProto {
        name: "axis".into(),
        r#type: attribute_type::INT,
        i: 2,
        ..Default::default()
    };
    new_nodes.extend([
        node("Shape", std::slice::from_ref(&short_logits), "shape", vec![]),
        node("Slice", &[value("shape"), value("lead_start"), value("lead_end")], "lead", vec![]),
        node(
            "Concat",
            &[value("lead"), value("vocab")],
            "full_shape",
            vec![AttributeProto { i: 0, ..axis.clone() }],
        ),
        node("Expand", &[value("impossible"), value("full_shape")], "fill", vec![]),
        node("Expand", &[value("ids"), value("shape")], "indices", vec![]),
        node(
            "ScatterElements",
            &[value("fill"), value("indices"), short_logits],
            "logits",
            vec![axis],
        ),
    ]);
    // The new nodes read only values computed before the output node: insert them right there.
    graph.node.splice(identity..identity, new_nodes);
    let identity = graph
        .node
        .iter()
        .position(|n| n.output.first() == Some(&output))
        .ok_or_else(|| err(format!("no node produces {output}")))?;
    graph.node[identity].input[0] = value("logits");
    prune(graph);
    Ok(())
}

/// Row-selected copies of the LM head's initializers under `prefix`; maps old to new names.
fn shortlisted_initializers(
    graph: &mut GraphProto,
    ids: &[u32],
    prefix: &str,
) -> Result<HashMap<&'static str, String>> {
    let find = |name: &str| graph.initializer.iter().find(|t| t.name == name);
    let k = ids.len();
    let mut added = vec![];
    let mut renamed = HashMap::new();
    if let Some(dense) = find(DENSE) {
        // [H, V], transposed for MatMul: keep the shortlisted columns.
        let values = dense.f32_values().ok_or_else(|| err("lm_head is not float32"))?;
        let [h, v] = dims2(dense)?;
        let mut out = Vec::with_capacity(h * k);
        for row in values.chunks_exact(v) {
            out.extend(ids.iter().map(|&t| row[t as usize]));
        }
        added.push(TensorProto::f32(&format!("{prefix}.weight"), &[h as i64, k as i64], &out));
        renamed.insert(DENSE, format!("{prefix}.weight"));
    }
    if let Some(q) = find(QWEIGHT) {
        let (v, nb, blob) = match q.dims.as_slice() {
            [v, nb, blob] => (*v as usize, *nb as usize, *blob as usize),
            other => return Err(err(format!("lm_head.qweight has shape {other:?}"))),
        };
        if q.raw_data.len() != v * nb * blob {
            return Err(err("lm_head.qweight is not raw bytes of its shape"));
        }
        let row = nb * blob;
        let packed: Vec<u8> = ids
            .iter()
            .flat_map(|&t| &q.raw_data[t as usize * row..(t as usize + 1) * row])
            .copied()
            .collect();
        added.push(TensorProto::u8(
            &format!("{prefix}.qweight"),
            &[k as i64, nb as i64, blob as i64],
            &packed,
        ));
        renamed.insert(QWEIGHT, format!("{prefix}.qweight"));
        let scales = find(SCALES)
            .and_then(TensorProto::f32_values)
            .ok_or_else(|| err("no float lm_head.scales"))?;
        if scales.len() != v * nb {
            return Err(err("lm_head.scales does not match lm_head.qweight"));
        }
        let picked: Vec<f32> = ids
            .iter()
            .flat_map(|&t| &scales[t as usize * nb..(t as usize + 1) * nb])
            .copied()
            .collect();
        added.push(TensorProto::f32(&format!("{prefix}.scales"), &[(k * nb) as i64], &picked));
        renamed.insert(SCALES, format!("{prefix}.scales"));
        if let Some(offsets) = find(OFFSETS) {
            // [n_blocks, V]: keep the shortlisted columns.
            let values =
                offsets.f32_values().ok_or_else(|| err("lm_head.block_offsets is not float32"))?;
            let [nb_o, v_o] = dims2(offsets)?;
            if nb_o != nb || v_o != v {
                return Err(err("lm_head.block_offsets does not match lm_head.qweight"));
            }
            let mut out = Vec::with_capacity(nb * k);
            for row in values.chunks_exact(v) {
                out.extend(ids.iter().map(|&t| row[t as usize]));
            }
            added.push(TensorProto::f32(
                &format!("{prefix}.block_offsets"),
                &[nb as i64, k as i64],
                &out,
            ));
            renamed.insert(OFFSETS, format!("{prefix}.block_offsets"));
        }
    }
    if renamed.is_empty() {
        return Err(err("the edge graph has no LM head initializers"));
    }
    graph.initializer.extend(added);
    Ok(renamed)
}

fn dims2(t: &TensorProto) -> Result<[usize; 2]> {
    match t.dims.as_slice() {
        [a, b] => Ok([*a as usize, *b as usize]),
        other => Err(err(format!("{} has shape {other:?}", t.name))),
    }
}

fn set_int_attr(node: &mut NodeProto, name: &str, value: i64) {
    match node.attribute.iter_mut().find(|a| a.name == name) {
        Some(a) => a.i = value,
        None => node.attribute.push(AttributeProto {
            name: name.into(),
            r#type: attribute_type::INT,
            i: value,
            ..Default::default()
        }),
    }
}

/// Nodes `value` depends on (indices).
fn ancestors(graph: &GraphProto, producers: &HashMap<&str, usize>, value: &str) -> HashSet<usize> {
    let mut seen = HashSet::new();
    let mut todo = vec![value.to_string()];
    while let Some(v) = todo.pop() {
        if let Some(&i) = producers.get(v.as_str())
            && seen.insert(i)
        {
            todo.extend(graph.node[i].input.iter().cloned());
        }
    }
    seen
}

/// Nodes that depend on `value` (indices).
fn descendants(graph: &GraphProto, value: &str) -> HashSet<usize> {
    let mut reached: HashSet<String> = HashSet::from([value.to_string()]);
    let mut seen = HashSet::new();
    // Nodes are in topological order: one pass finds every descendant.
    for (i, n) in graph.node.iter().enumerate() {
        if n.input.iter().any(|x| reached.contains(x)) {
            seen.insert(i);
            reached.extend(n.output.iter().cloned());
        }
    }
    seen
}

/// Removes nodes whose outputs nothing reads, then initializers no node reads.
fn prune(graph: &mut GraphProto) {
    loop {
        let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        let read: HashSet<&str> =
            graph.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
        let dead: Vec<usize> = graph
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.output.iter().all(|o| {
                    o.is_empty() || (!read.contains(o.as_str()) && !outputs.contains(o.as_str()))
                })
            })
            .map(|(i, _)| i)
            .collect();
        if dead.is_empty() {
            break;
        }
        for i in dead.into_iter().rev() {
            graph.node.remove(i);
        }
    }
    let read: HashSet<String> = graph.node.iter().flat_map(|n| n.input.iter().cloned()).collect();
    graph.initializer.retain(|t| read.contains(&t.name));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{GraphOptions, edge_graph};
    use crate::manifest::WeightFormat;
    use collm_checkpoint::tiny::{TinySpec, checkpoint};

    fn edge(format: WeightFormat, exits: &[usize]) -> (ModelProto, usize) {
        let mut ckpt = checkpoint(&TinySpec::default(), 1).expect("tiny checkpoint");
        crate::convert_weights(&mut ckpt, format);
        let vocab = ckpt.config.vocab_size;
        (edge_graph(&ckpt, 3, exits, &GraphOptions::default()), vocab)
    }

    fn initializer<'a>(m: &'a ModelProto, name: &str) -> Option<&'a TensorProto> {
        m.graph.as_ref()?.initializer.iter().find(|t| t.name == name)
    }

    fn outputs(m: &ModelProto) -> Vec<String> {
        m.graph
            .as_ref()
            .map(|g| g.output.iter().map(|o| o.name.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_head_multiplies_by_the_shortlisted_rows_and_the_full_head_leaves() {
        for format in [WeightFormat::F32, WeightFormat::Q8, WeightFormat::Q4] {
            let (mut m, vocab) = edge(format, &[3]);
            let before = outputs(&m);
            let ids = [2u32, 5, 40, 41, (vocab - 1) as u32];
            shortlist_exit(&mut m, 3, &ids, vocab).expect("rewrites");
            assert_eq!(outputs(&m), before, "{format:?}: same outputs");
            let g = m.graph.as_ref().expect("graph");
            assert!(!g.initializer.iter().any(|t| t.name.starts_with("lm_head")), "{format:?}");
            let stored = initializer(&m, "exit.3.shortlist/ids").expect("ids");
            assert_eq!(stored.dims, vec![1, 1, 5]);
            let k_rows = match format {
                WeightFormat::F32 => {
                    initializer(&m, "exit.3.shortlist.weight").expect("dense").dims[1]
                }
                _ => initializer(&m, "exit.3.shortlist.qweight").expect("blocks").dims[0],
            };
            assert_eq!(k_rows, 5, "{format:?}");
            if let Some(n) =
                g.node.iter().find(|n| n.op_type == NBITS_OP && n.name.ends_with("/shortlist"))
            {
                let attr = n.attribute.iter().find(|a| a.name == "N").expect("N");
                assert_eq!(attr.i, 5);
            }
            assert!(g.node.iter().any(|n| n.op_type == "ScatterElements"));
            // Every node input is a graph input, an initializer, or an earlier node's output.
            let mut known: HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
            known.extend(g.initializer.iter().map(|t| t.name.as_str()));
            for n in &g.node {
                for i in n.input.iter().filter(|i| !i.is_empty()) {
                    assert!(
                        known.contains(i.as_str()),
                        "{format:?}: {} reads {i} before it exists",
                        n.name
                    );
                }
                known.extend(n.output.iter().map(String::as_str));
            }
        }
    }

    #[test]
    fn another_exit_keeps_the_full_head() {
        let (mut m, vocab) = edge(WeightFormat::Q8, &[1, 3]);
        shortlist_exit(&mut m, 3, &[0, 1, 2], vocab).expect("rewrites");
        assert!(initializer(&m, "lm_head.qweight").is_some(), "exit 1 still reads it");
        assert!(shortlist_exit(&mut m, 3, &[0, 1], vocab).is_err(), "already a shortlist head");
    }

    #[test]
    fn bad_shortlists_are_refused() {
        let (mut m, vocab) = edge(WeightFormat::F32, &[3]);
        for ids in [&[][..], &[3, 3], &[4, 2], &[vocab as u32]] {
            assert!(shortlist_exit(&mut m, 3, ids, vocab).is_err(), "{ids:?}");
        }
        assert!(shortlist_exit(&mut m, 2, &[1], vocab).is_err(), "no exit after layer 2");
    }
}
