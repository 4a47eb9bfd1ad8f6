//! A workflow's DAG laid out for an SVG drawing: layers top to bottom, so a long pipeline
//! stays narrow enough for a phone and a wide fan-out wraps into a scrollable figure.
//!
//! The layout is computed here, on the server, from the petgraph graph of the steps; the page
//! only draws boxes and curves at the positions given (`_dag.html`). Live pages change a
//! node's state by its `data-step`, never its position, so the drawing stays put while a run
//! goes on.

use std::collections::HashMap;

use petgraph::graph::{DiGraph, NodeIndex};
use secureclaw_engine::validate::Validated;
use serde::Serialize;

/// Width of a step's box, in SVG units.
pub const NODE_WIDTH: u32 = 184;
/// Height of a step's box.
pub const NODE_HEIGHT: u32 = 60;
const GAP_X: u32 = 24;
const GAP_Y: u32 = 40;
const MARGIN: u32 = 8;
/// Longer step ids are cut in the box (the full id is in its tooltip and the table).
const LABEL_CHARS: usize = 22;

/// One step as the drawing needs it.
#[derive(Debug, Clone)]
pub struct DagStep {
    pub id: String,
    /// Ids of the steps this one needs; unknown ids are ignored.
    pub needs: Vec<String>,
    /// `read_only`, `low_write`, `destructive` or `network_egress`.
    pub tier: String,
    /// The run's state of the step; `None` before a run.
    pub state: Option<String>,
}

/// A step's box.
#[derive(Debug, Clone, Serialize)]
pub struct DagNode {
    pub id: String,
    /// The id as shown in the box (cut when long).
    pub label: String,
    pub tier: String,
    /// The tier in words, since colour alone must not tell it.
    pub tier_label: &'static str,
    /// `pending` before a run.
    pub state: String,
    pub state_label: String,
    pub x: u32,
    pub y: u32,
}

/// A curve from a needed step to the step that needs it.
#[derive(Debug, Clone, Serialize)]
pub struct DagEdge {
    pub from: String,
    pub to: String,
    /// SVG path data.
    pub path: String,
}

/// What `_dag.html` draws.
#[derive(Debug, Clone, Serialize)]
pub struct DagView {
    pub width: u32,
    pub height: u32,
    pub node_width: u32,
    pub node_height: u32,
    pub nodes: Vec<DagNode>,
    pub edges: Vec<DagEdge>,
}

/// The steps of a validated workflow, before any run.
pub fn steps_of(v: &Validated) -> Vec<DagStep> {
    v.workflow
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| DagStep {
            id: s.id.clone(),
            needs: v
                .deps
                .get(i)
                .map(|d| {
                    d.iter()
                        .filter_map(|&j| v.workflow.steps.get(j).map(|p| p.id.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            tier: v
                .risk
                .get(i)
                .map(|r| r.tier.as_str().to_string())
                .unwrap_or_default(),
            state: None,
        })
        .collect()
}

/// The tier in words.
pub fn tier_label(tier: &str) -> &'static str {
    match tier {
        "read_only" => "read-only",
        "low_write" => "writes",
        "destructive" => "destructive",
        "network_egress" => "network",
        _ => "unknown tier",
    }
}

/// Lay the steps out: each step one layer below the deepest step it needs; within a layer,
/// steps sit near the mean position of what they need (one barycentre pass, enough to keep
/// the usual fan-out and fan-in uncrossed).
pub fn layout(steps: &[DagStep]) -> DagView {
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..steps.len()).map(|i| graph.add_node(i)).collect();
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    for (i, s) in steps.iter().enumerate() {
        for need in &s.needs {
            if let Some(&j) = index.get(need.as_str())
                && j != i
            {
                graph.add_edge(nodes[j], nodes[i], ());
            }
        }
    }

    // A cycle cannot be validated, but the drawing must not loop on one: without a
    // topological order every step keeps the order it was written in, on one layer each.
    let (order, acyclic): (Vec<usize>, bool) = match petgraph::algo::toposort(&graph, None) {
        Ok(sorted) => (sorted.into_iter().map(|n| graph[n]).collect(), true),
        Err(_) => ((0..steps.len()).collect(), false),
    };

    let mut layer = vec![0usize; steps.len()];
    for (pos, &i) in order.iter().enumerate() {
        layer[i] = if acyclic {
            graph
                .neighbors_directed(nodes[i], petgraph::Direction::Incoming)
                .map(|p| layer[graph[p]] + 1)
                .max()
                .unwrap_or(0)
        } else {
            pos
        };
    }

    let depth = layer.iter().copied().max().map_or(0, |d| d + 1);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); depth];
    for &i in &order {
        rows[layer[i]].push(i);
    }
    let mut slot = vec![0f64; steps.len()];
    for row in &mut rows {
        // Ties, and steps that need nothing, keep the order they are written in.
        let mut keyed: Vec<(f64, usize)> = row
            .iter()
            .map(|&i| {
                let parents: Vec<f64> = graph
                    .neighbors_directed(nodes[i], petgraph::Direction::Incoming)
                    .map(|p| slot[graph[p]])
                    .collect();
                let key = if parents.is_empty() {
                    i as f64
                } else {
                    parents.iter().sum::<f64>() / parents.len() as f64
                };
                (key, i)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        *row = keyed.into_iter().map(|(_, i)| i).collect();
        for (k, &i) in row.iter().enumerate() {
            slot[i] = k as f64;
        }
    }

    let widest = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let width = (MARGIN * 2 + widest * NODE_WIDTH + widest.saturating_sub(1) * GAP_X).max(1);
    let height =
        (MARGIN * 2 + depth as u32 * NODE_HEIGHT + (depth as u32).saturating_sub(1) * GAP_Y).max(1);

    let mut pos = vec![(0u32, 0u32); steps.len()];
    for (r, row) in rows.iter().enumerate() {
        let used = row.len() as u32 * NODE_WIDTH + (row.len() as u32).saturating_sub(1) * GAP_X;
        // Narrower rows are centred under the widest one.
        let left = MARGIN + (width - 2 * MARGIN).saturating_sub(used) / 2;
        for (k, &i) in row.iter().enumerate() {
            pos[i] = (
                left + k as u32 * (NODE_WIDTH + GAP_X),
                MARGIN + r as u32 * (NODE_HEIGHT + GAP_Y),
            );
        }
    }

    let dag_nodes = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let state = s.state.clone().unwrap_or_else(|| "pending".to_string());
            DagNode {
                id: s.id.clone(),
                label: cut(&s.id, LABEL_CHARS),
                tier: s.tier.clone(),
                tier_label: tier_label(&s.tier),
                state_label: state.replace('_', " "),
                state,
                x: pos[i].0,
                y: pos[i].1,
            }
        })
        .collect();
    let edges = graph
        .edge_indices()
        .filter_map(|e| graph.edge_endpoints(e))
        .map(|(a, b)| {
            let (from, to) = (graph[a], graph[b]);
            DagEdge {
                from: steps[from].id.clone(),
                to: steps[to].id.clone(),
                path: curve(pos[from], pos[to]),
            }
        })
        .collect();
    DagView {
        width,
        height,
        node_width: NODE_WIDTH,
        node_height: NODE_HEIGHT,
        nodes: dag_nodes,
        edges,
    }
}

/// A curve from the bottom middle of one box to the top middle of another.
fn curve(from: (u32, u32), to: (u32, u32)) -> String {
    let (x1, y1) = (from.0 + NODE_WIDTH / 2, from.1 + NODE_HEIGHT);
    // The arrow head ends just above the box so it stays visible.
    let (x2, y2) = (to.0 + NODE_WIDTH / 2, to.1.saturating_sub(3));
    let mid = (y1 + y2) / 2;
    format!("M{x1},{y1} C{x1},{mid} {x2},{mid} {x2},{y2}")
}

fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, needs: &[&str]) -> DagStep {
        DagStep {
            id: id.into(),
            needs: needs.iter().map(|s| s.to_string()).collect(),
            tier: "low_write".into(),
            state: None,
        }
    }

    fn node<'a>(v: &'a DagView, id: &str) -> &'a DagNode {
        v.nodes.iter().find(|n| n.id == id).unwrap()
    }

    #[test]
    fn a_step_sits_below_everything_it_needs() {
        let v = layout(&[
            step("fetch", &[]),
            step("build", &["fetch"]),
            step("lint", &["fetch"]),
            step("ship", &["build", "lint"]),
        ]);
        assert!(node(&v, "build").y > node(&v, "fetch").y);
        assert_eq!(node(&v, "build").y, node(&v, "lint").y);
        assert!(node(&v, "ship").y > node(&v, "build").y);
        assert_ne!(node(&v, "build").x, node(&v, "lint").x);
        assert_eq!(v.edges.len(), 4);
        // Every node lies inside the drawing.
        for n in &v.nodes {
            assert!(
                n.x + NODE_WIDTH <= v.width && n.y + NODE_HEIGHT <= v.height,
                "{n:?}"
            );
        }
    }

    #[test]
    fn a_chain_is_one_box_wide() {
        let v = layout(&[step("a", &[]), step("b", &["a"]), step("c", &["b"])]);
        assert_eq!(v.width, NODE_WIDTH + 2 * MARGIN);
        let xs: Vec<u32> = v.nodes.iter().map(|n| n.x).collect();
        assert!(xs.iter().all(|&x| x == xs[0]));
    }

    #[test]
    fn children_follow_their_parents_order() {
        // Written in crossing order: the barycentre pass uncrosses them.
        let v = layout(&[
            step("left", &[]),
            step("right", &[]),
            step("under_right", &["right"]),
            step("under_left", &["left"]),
        ]);
        assert!(node(&v, "left").x < node(&v, "right").x);
        assert!(node(&v, "under_left").x < node(&v, "under_right").x);
    }

    #[test]
    fn cycles_and_unknown_needs_do_not_hang_the_drawing() {
        let v = layout(&[step("a", &["b"]), step("b", &["a"]), step("c", &["ghost"])]);
        assert_eq!(v.nodes.len(), 3);
        let v = layout(&[]);
        assert!(v.nodes.is_empty() && v.width >= 1 && v.height >= 1);
    }

    #[test]
    fn labels_are_cut_and_states_named() {
        let mut s = step("a-very-long-step-identifier-indeed", &[]);
        s.state = Some("awaiting_approval".into());
        s.tier = "destructive".into();
        let v = layout(&[s]);
        let n = &v.nodes[0];
        assert_eq!(n.label.chars().count(), LABEL_CHARS);
        assert!(n.label.ends_with('…'));
        assert_eq!(n.state_label, "awaiting approval");
        assert_eq!(n.tier_label, "destructive");
        assert_eq!(layout(&[step("x", &[])]).nodes[0].state, "pending");
    }

    #[test]
    fn the_drawing_is_escaped_and_free_of_inline_style() {
        let mut hostile = step("<script>x</script>", &[]);
        hostile.tier = "destructive".into();
        let v = layout(&[hostile, step("next", &["<script>x</script>"])]);
        let t = crate::ui::render::Templates::load().unwrap();
        let svg = t
            .render(
                "_dag.html",
                minijinja::context! { dag => minijinja::Value::from_serialize(&v) },
            )
            .unwrap();
        assert!(svg.contains(r#"<svg id="dag""#), "{svg}");
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(!svg.contains("style="), "{svg}");
        assert!(svg.contains("⚠ destructive"), "{svg}");
        assert_eq!(svg.matches("class=\"dag-edge\"").count(), 1, "{svg}");
    }
}
