//! Graphviz DOT rendering of a graph, for `cnnc --emit dot`.
//!
//! Each IR node `%i` becomes DOT node `n<i>`, labelled with its layer name and its op as the
//! text form prints it (see [`crate::print::describe`]). Edges carry the producing node's shape,
//! and every output gets an edge to a final `return` node so the output shapes show too. Model
//! inputs are filled ellipses, outputs double-bordered boxes.

use crate::graph::{Graph, Node, NodeId};
use crate::op::Op;
use crate::print::describe;
use std::fmt::Write;

/// The graph as a DOT digraph, top to bottom.
pub fn dot(graph: &Graph) -> String {
    dot_with_clusters(graph, &[])
}

/// Like [`dot`], drawing each `(label, nodes)` group inside a `subgraph cluster_<k>` box.
///
/// This is the hook for drawing blocks (`layer1.0`) as boxes: the caller chooses the groups.
/// Graphviz clusters must nest, so a node listed in several groups is drawn in the first one
/// only; groups left empty are not drawn, and handles out of range are ignored.
pub fn dot_with_clusters(graph: &Graph, clusters: &[(String, Vec<NodeId>)]) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail, so the `fmt::Result`s below are always `Ok`.
    write_dot(&mut out, graph, clusters).unwrap_or(());
    out
}

fn write_dot(out: &mut String, graph: &Graph, clusters: &[(String, Vec<NodeId>)]) -> std::fmt::Result {
    writeln!(out, "digraph {} {{", quote(&graph.name))?;
    writeln!(out, "  rankdir=TB;")?;
    writeln!(out, "  node [shape=box, fontname=\"monospace\"];")?;
    writeln!(out, "  edge [fontname=\"monospace\", fontsize=10];")?;
    let (members, loose) = assign_clusters(graph, clusters);
    for (k, ((label, _), ids)) in clusters.iter().zip(&members).enumerate() {
        if ids.is_empty() {
            continue;
        }
        writeln!(out, "  subgraph cluster_{k} {{")?;
        writeln!(out, "    label={};", quote(label))?;
        for &id in ids {
            write_node(out, "    ", graph, id)?;
        }
        writeln!(out, "  }}")?;
    }
    for id in loose {
        write_node(out, "  ", graph, id)?;
    }
    write_edges(out, graph)?;
    writeln!(out, "}}")
}

/// For each cluster the nodes it draws, and the nodes in no cluster, all in node order.
fn assign_clusters(graph: &Graph, clusters: &[(String, Vec<NodeId>)]) -> (Vec<Vec<NodeId>>, Vec<NodeId>) {
    let mut owner: Vec<Option<usize>> = vec![None; graph.len()];
    for (k, (_, ids)) in clusters.iter().enumerate() {
        for id in ids {
            if let Some(slot @ None) = owner.get_mut(id.index()) {
                *slot = Some(k);
            }
        }
    }
    let mut members = vec![Vec::new(); clusters.len()];
    let mut loose = Vec::new();
    for id in graph.ids() {
        match owner[id.index()] {
            Some(k) => members[k].push(id),
            None => loose.push(id),
        }
    }
    (members, loose)
}

fn write_node(out: &mut String, indent: &str, graph: &Graph, id: NodeId) -> std::fmt::Result {
    let node = &graph[id];
    let mut label = format!("{}\n{}", node.name, describe(&node.op));
    if !node.absorbed.is_empty() {
        label.push_str(&format!("\n<- {}", node.absorbed.join(", ")));
    }
    write!(out, "{indent}n{} [label={}", id.index(), quote(&label))?;
    if node.op == Op::Input {
        write!(out, ", shape=ellipse, style=filled, fillcolor=\"#dbeafe\"")?;
    }
    if graph.outputs.contains(&id) {
        write!(out, ", peripheries=2")?;
    }
    writeln!(out, "];")
}

/// Operand edges labelled with the operand's shape, then output edges to `return`. Handles
/// out of range are skipped so every edge joins declared nodes.
fn write_edges(out: &mut String, graph: &Graph) -> std::fmt::Result {
    let in_range = |id: &NodeId| id.index() < graph.len();
    for (id, node) in graph.iter() {
        for &input in node.inputs.iter().filter(|i| in_range(i)) {
            write_edge(out, &graph[input], &format!("n{}", input.index()), &format!("n{}", id.index()))?;
        }
    }
    let outputs: Vec<NodeId> = graph.outputs.iter().copied().filter(in_range).collect();
    if !outputs.is_empty() {
        writeln!(out, "  return [label=\"return\", shape=plaintext];")?;
    }
    for output in outputs {
        write_edge(out, &graph[output], &format!("n{}", output.index()), "return")?;
    }
    Ok(())
}

fn write_edge(out: &mut String, from_node: &Node, from: &str, to: &str) -> std::fmt::Result {
    writeln!(out, "  {from} -> {to} [label={}];", quote(&from_node.shape.to_string()))
}

/// A DOT quoted string. Quotes and backslashes are escaped; line breaks become DOT's `\n`
/// (centred line), so a name can never end the string or the statement early.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{add, conv, input, small_cnn};
    use std::collections::HashSet;

    /// `text` with every quoted string replaced by `""`, so structure can be checked plainly.
    fn strip_strings(text: &str) -> String {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            out.push(c);
            if c == '"' {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push('"');
            }
        }
        out
    }

    /// Checks the braces balance and every edge joins declared nodes; returns the edge count.
    fn check_structure(dot: &str) -> usize {
        let plain = strip_strings(dot);
        let mut depth = 0i32;
        for c in plain.chars() {
            depth += match c {
                '{' => 1,
                '}' => -1,
                _ => 0,
            };
            assert!(depth >= 0, "unbalanced braces in\n{dot}");
        }
        assert_eq!(depth, 0, "unbalanced braces in\n{dot}");
        let mut declared = HashSet::new();
        let mut edges = Vec::new();
        for line in plain.lines().map(str::trim) {
            let head = line.split(" [").next().unwrap_or("");
            match head.split_once(" -> ") {
                Some((from, to)) => edges.push((from.to_string(), to.to_string())),
                None if line.contains(" [") && !["node", "edge"].contains(&head) => {
                    assert!(declared.insert(head.to_string()), "{head} declared twice");
                }
                None => {}
            }
        }
        for (from, to) in &edges {
            assert!(declared.contains(from) && declared.contains(to), "edge {from} -> {to} joins undeclared nodes");
        }
        edges.len()
    }

    #[test]
    fn small_cnn_is_well_formed_and_shows_shapes() {
        let g = small_cnn();
        let text = dot(&g);
        // Six operand edges and one output edge.
        assert_eq!(check_structure(&text), 7);
        assert!(text.starts_with("digraph \"small\" {\n  rankdir=TB;\n"), "{text}");
        assert!(text.contains("n0 -> n1 [label=\"[3, 32, 32]\"];"), "{text}");
        assert!(text.contains("n5 -> n6 [label=\"[4096]\"];"), "{text}");
        assert!(text.contains("n6 -> return [label=\"[10]\"];"), "{text}");
        let conv_line = "n1 [label=\"features.conv\\nconv {out: 16, k: 3, pad: 1, bias: false}\"];";
        assert!(text.contains(conv_line), "{text}");
        assert!(text.contains("n0 [label=\"x\\ninput\", shape=ellipse"), "{text}");
        assert!(text.contains("n6 [label=\"classifier\\nfc {out: 10}\", peripheries=2];"), "{text}");
    }

    #[test]
    fn names_are_escaped() {
        let mut g = Graph::new("quote\"d");
        let x = input(&mut g, "a\"b\\c\nd{", &[1, 4, 4]);
        let y = add(&mut g, conv(1, 1, 1, 0, true), &[x], "}");
        g.outputs.push(y);
        let text = dot(&g);
        assert_eq!(check_structure(&text), 2);
        assert!(text.contains(r#"digraph "quote\"d" {"#), "{text}");
        assert!(text.contains(r#"n0 [label="a\"b\\c\nd{\ninput""#), "{text}");
    }

    #[test]
    fn clusters_hold_their_nodes() {
        let g = small_cnn();
        let ids = |r: std::ops::Range<usize>| r.map(NodeId::from_index).collect::<Vec<_>>();
        let clusters = vec![
            ("features".to_string(), ids(1..5)),
            ("again".to_string(), ids(4..6)),
            ("empty".to_string(), vec![NodeId::from_index(99)]),
        ];
        let text = dot_with_clusters(&g, &clusters);
        assert_eq!(check_structure(&text), 7);
        let body = |k: usize| {
            let start = text.find(&format!("subgraph cluster_{k} {{")).expect("cluster drawn");
            let len = text[start..].find("\n  }").expect("cluster closed");
            text[start..start + len].to_string()
        };
        let features = body(0);
        assert!(features.contains("label=\"features\";"), "{features}");
        for n in ["n1 ", "n2 ", "n3 ", "n4 "] {
            assert!(features.contains(n), "{n} missing from\n{features}");
        }
        // n4 went to the first cluster listing it; the second keeps only n5.
        let again = body(1);
        assert!(again.contains("n5 ") && !again.contains("n4 "), "{again}");
        assert!(!text.contains("cluster_2"), "{text}");
        assert_eq!(dot(&g), dot_with_clusters(&g, &[]));
    }
}
