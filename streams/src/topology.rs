//! The topology: what the DSL builds (nodes with typed build functions, stores, topics) and how
//! it splits into sub-topologies, the unit of parallelism (a task = sub-topology × partition).
//!
//! Nodes are kept as build functions, not as processors: every task builds its own processor
//! graph (its own stores, its own per-key state), from the sinks up, so that each node owns its
//! children's closures directly.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use spate_client::ConsumerRecord;

use crate::processor::{shared, Downstream, ProcessFn, Punctuator, TaskContext};
use crate::store::{StoreSpec, TaskStore};
use crate::StreamsError;

pub(crate) type NodeId = usize;

/// A topic a node reads or writes: a user topic by its name, or an internal topic by its
/// suffix (the runtime prefixes `<application.id>-`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TopicName {
    User(String),
    /// `<application.id>-<name>-repartition`.
    Repartition(String),
}

impl TopicName {
    pub fn resolve(&self, application_id: &str) -> String {
        match self {
            TopicName::User(t) => t.clone(),
            TopicName::Repartition(n) => format!("{application_id}-{n}-repartition"),
        }
    }
}

/// Reads one raw record of a source topic and pushes it down the task's graph.
pub(crate) type SourceFn = Box<dyn FnMut(&mut TaskContext, &ConsumerRecord) -> Result<(), StreamsError> + Send>;

/// A flush hook: forwards what an operator held back (deduplicated aggregate updates) at commit.
pub(crate) type FlushFn = Box<dyn FnMut(&mut TaskContext) -> Result<(), StreamsError> + Send>;

type BuildFn = Arc<dyn Fn(&mut TaskBuild<'_>) -> Result<(), StreamsError> + Send + Sync>;

pub(crate) struct NodeDef {
    pub name: String,
    pub parents: Vec<NodeId>,
    pub source_topics: Vec<TopicName>,
    pub sink_topic: Option<TopicName>,
    pub stores: Vec<String>,
    /// Joins need their inputs co-partitioned.
    pub joins: bool,
    pub build: BuildFn,
}

/// What the DSL accumulates.
#[derive(Default)]
pub(crate) struct TopologyBuilder {
    pub nodes: Vec<NodeDef>,
    pub stores: BTreeMap<String, StoreSpec>,
    counter: usize,
    pub late_records_topic: Option<String>,
    pub globals: Vec<GlobalDef>,
    /// Repartition topics whose partition count is that of the sub-topology of a node other
    /// than their writer's (a foreign-key join's subscription and response topics).
    pub copartition: Vec<(String, NodeId)>,
    /// Windowed aggregation nodes and how their windows close, for `suppress` downstream.
    pub window_closes: HashMap<NodeId, crate::dsl::suppress::WindowClose>,
}

/// A global table: every instance reads all partitions of `topic` into the store `store`.
#[derive(Debug, Clone)]
pub(crate) struct GlobalDef {
    pub topic: String,
    pub store: String,
    pub in_memory: bool,
}

impl TopologyBuilder {
    /// Kafka's generated names: `KSTREAM-FILTER-0000000003`.
    pub fn name(&mut self, prefix: &str) -> String {
        let n = self.counter;
        self.counter += 1;
        format!("{prefix}-{n:010}")
    }

    pub fn add(&mut self, def: NodeDef) -> NodeId {
        self.nodes.push(def);
        self.nodes.len() - 1
    }

    pub fn add_store(&mut self, spec: StoreSpec) -> Result<(), StreamsError> {
        if self.stores.contains_key(&spec.name) {
            return Err(StreamsError::Topology(format!("store name '{}' is used twice", spec.name)));
        }
        self.stores.insert(spec.name.clone(), spec);
        Ok(())
    }
}

/// A global table's store: the latest value bytes per key bytes of its topic, shared by every
/// task of the instance and written by the global thread.
pub(crate) type GlobalStore = Arc<Mutex<crate::store::LoggedKv>>;

/// A processing node with one typed input and one typed output.
///
/// `make` gets the task's build context and the node's children and returns its processing
/// function.
pub(crate) fn processor_node<KIn, VIn, KOut, VOut, F>(
    builder: &mut TopologyBuilder,
    name: String,
    parents: Vec<NodeId>,
    stores: Vec<String>,
    make: F,
) -> NodeId
where
    KIn: 'static,
    VIn: 'static,
    KOut: Clone + 'static,
    VOut: Clone + 'static,
    F: Fn(&mut TaskBuild<'_>, Downstream<KOut, VOut>) -> Result<ProcessFn<KIn, VIn>, StreamsError>
        + Send
        + Sync
        + 'static,
{
    let id = builder.nodes.len();
    let build_parents = parents.clone();
    let build: BuildFn = Arc::new(move |tb: &mut TaskBuild<'_>| {
        let children = tb.take_children::<KOut, VOut>(id)?;
        let f = make(tb, Downstream::new(children))?;
        for (parent, f) in build_parents.iter().zip(shared(f, build_parents.len())) {
            tb.push_child::<KIn, VIn>(*parent, f);
        }
        Ok(())
    });
    builder.add(NodeDef { name, parents, source_topics: Vec::new(), sink_topic: None, stores, joins: false, build })
}

/// A sub-topology: nodes connected by parent edges or shared stores.
#[derive(Debug, Clone)]
pub(crate) struct SubTopology {
    pub id: u32,
    pub nodes: Vec<NodeId>,
    pub source_topics: BTreeSet<TopicName>,
    pub sink_topics: BTreeSet<TopicName>,
    pub stores: BTreeSet<String>,
    pub joins: bool,
}

/// A built topology, shared by every stream thread of an instance.
pub struct Topology {
    pub(crate) nodes: Vec<NodeDef>,
    pub(crate) stores: BTreeMap<String, StoreSpec>,
    pub(crate) subtopologies: Vec<SubTopology>,
    pub(crate) late_records_topic: Option<String>,
    pub(crate) globals: Vec<GlobalDef>,
    /// Repartition topic name → the sub-topology whose partition count it takes.
    pub(crate) repartition_count_from: HashMap<String, u32>,
}

impl Topology {
    pub(crate) fn new(builder: TopologyBuilder) -> Result<Self, StreamsError> {
        let n = builder.nodes.len();
        for g in &builder.globals {
            if builder.stores.contains_key(&g.store)
                || builder.globals.iter().filter(|o| o.store == g.store).count() > 1
            {
                return Err(StreamsError::Topology(format!("store name '{}' is used twice", g.store)));
            }
            if builder
                .nodes
                .iter()
                .any(|node| node.source_topics.iter().any(|t| *t == TopicName::User(g.topic.clone())))
            {
                return Err(StreamsError::Topology(format!(
                    "topic '{}' is read both as a global table and as a stream or table",
                    g.topic
                )));
            }
        }
        if n == 0 {
            return Err(StreamsError::Topology("the topology is empty: add a stream or table".into()));
        }
        // Union-find over parent edges and shared stores.
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(p: &mut [usize], x: usize) -> usize {
            let mut r = x;
            while p[r] != r {
                r = p[r];
            }
            let mut x = x;
            while p[x] != r {
                let next = p[x];
                p[x] = r;
                x = next;
            }
            r
        }
        let mut store_owner: HashMap<&str, usize> = HashMap::new();
        for (id, node) in builder.nodes.iter().enumerate() {
            for &p in &node.parents {
                let (a, b) = (find(&mut parent, id), find(&mut parent, p));
                parent[a] = b;
            }
            for s in &node.stores {
                if !builder.stores.contains_key(s) {
                    return Err(StreamsError::Topology(format!("node {} uses unknown store '{s}'", node.name)));
                }
                if let Some(&other) = store_owner.get(s.as_str()) {
                    let (a, b) = (find(&mut parent, id), find(&mut parent, other));
                    parent[a] = b;
                } else {
                    store_owner.insert(s, id);
                }
            }
        }
        let mut groups: BTreeMap<usize, Vec<NodeId>> = BTreeMap::new();
        for id in 0..n {
            let root = find(&mut parent, id);
            groups.entry(root).or_default().push(id);
        }
        // Number sub-topologies by their first node, as Kafka does.
        let mut ordered: Vec<Vec<NodeId>> = groups.into_values().collect();
        ordered.sort_by_key(|nodes| nodes[0]);
        let mut subtopologies = Vec::new();
        for (i, nodes) in ordered.into_iter().enumerate() {
            let mut st = SubTopology {
                id: i as u32,
                nodes: nodes.clone(),
                source_topics: BTreeSet::new(),
                sink_topics: BTreeSet::new(),
                stores: BTreeSet::new(),
                joins: false,
            };
            for &id in &nodes {
                let node = &builder.nodes[id];
                st.source_topics.extend(node.source_topics.iter().cloned());
                st.sink_topics.extend(node.sink_topic.iter().cloned());
                st.stores.extend(node.stores.iter().cloned());
                st.joins |= node.joins;
            }
            if st.source_topics.is_empty() {
                return Err(StreamsError::Topology(format!(
                    "sub-topology {i} (node {}) reads no topic",
                    builder.nodes[nodes[0]].name
                )));
            }
            subtopologies.push(st);
        }
        let mut seen: BTreeMap<&TopicName, u32> = BTreeMap::new();
        for st in &subtopologies {
            for t in &st.source_topics {
                if let Some(other) = seen.insert(t, st.id) {
                    return Err(StreamsError::Topology(format!(
                        "topic {t:?} is read by sub-topologies {other} and {}: read it once and share the stream",
                        st.id
                    )));
                }
            }
        }
        let mut repartition_count_from = HashMap::new();
        for (topic, node) in &builder.copartition {
            let st = subtopologies.iter().find(|st| st.nodes.contains(node)).expect("every node is in a sub-topology");
            repartition_count_from.insert(topic.clone(), st.id);
        }
        Ok(Topology {
            repartition_count_from,
            nodes: builder.nodes,
            stores: builder.stores,
            subtopologies,
            late_records_topic: builder.late_records_topic,
            globals: builder.globals,
        })
    }

    /// Sub-topologies whose sources include `topic` (resolved names).
    pub(crate) fn subtopology_of(&self, topic: &str, application_id: &str) -> Option<&SubTopology> {
        self.subtopologies.iter().find(|st| st.source_topics.iter().any(|t| t.resolve(application_id) == topic))
    }

    /// All topics the application reads, resolved.
    pub(crate) fn source_topics(&self, application_id: &str) -> Vec<String> {
        self.subtopologies.iter().flat_map(|st| st.source_topics.iter().map(|t| t.resolve(application_id))).collect()
    }
}

impl fmt::Display for Topology {
    /// Kafka's `TopologyDescription` layout, roughly: sub-topologies, their nodes, topics and
    /// stores.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Topologies:")?;
        for st in &self.subtopologies {
            writeln!(f, "   Sub-topology: {}", st.id)?;
            for &id in &st.nodes {
                let node = &self.nodes[id];
                write!(f, "    {}", node.name)?;
                if !node.source_topics.is_empty() {
                    write!(f, " (topics: {:?})", node.source_topics)?;
                }
                if let Some(t) = &node.sink_topic {
                    write!(f, " (topic: {t:?})")?;
                }
                if !node.stores.is_empty() {
                    write!(f, " (stores: {:?})", node.stores)?;
                }
                let parents: Vec<&str> = node.parents.iter().map(|&p| self.nodes[p].name.as_str()).collect();
                if !parents.is_empty() {
                    write!(f, " <-- {}", parents.join(", "))?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

/// How a source handles a record it cannot decode (`default.deserialization.exception.handler`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeserializationHandler {
    /// Stop the application (Kafka's default, `LogAndFailExceptionHandler`).
    LogAndFail,
    /// Log, count and skip the record (`LogAndContinueExceptionHandler`).
    LogAndContinue,
    /// Write the raw record to this topic and continue (KIP-1034's dead-letter queue).
    DeadLetterQueue(String),
}

/// Building one task's processor graph.
pub(crate) struct TaskBuild<'a> {
    pub task_id: crate::TaskId,
    pub application_id: &'a str,
    pub stores: &'a HashMap<String, TaskStore>,
    pub deserialization_handler: &'a DeserializationHandler,
    /// The instance's global stores, by name.
    pub globals: &'a HashMap<String, GlobalStore>,
    /// Record-cache bytes for each caching operator and store of the task.
    pub cache_max_bytes: usize,
    children: HashMap<NodeId, Vec<Box<dyn Any + Send>>>,
    pub sources: Vec<(String, SourceFn)>,
    pub punctuators: Vec<Punctuator>,
    pub flushers: Vec<FlushFn>,
}

impl<'a> TaskBuild<'a> {
    pub fn new(
        task_id: crate::TaskId,
        application_id: &'a str,
        stores: &'a HashMap<String, TaskStore>,
        deserialization_handler: &'a DeserializationHandler,
        globals: &'a HashMap<String, GlobalStore>,
        cache_max_bytes: usize,
    ) -> Self {
        TaskBuild {
            task_id,
            application_id,
            stores,
            deserialization_handler,
            globals,
            cache_max_bytes,
            children: HashMap::new(),
            sources: Vec::new(),
            punctuators: Vec::new(),
            flushers: Vec::new(),
        }
    }

    pub(crate) fn take_children<K: 'static, V: 'static>(
        &mut self,
        id: NodeId,
    ) -> Result<Vec<ProcessFn<K, V>>, StreamsError> {
        let Some(list) = self.children.remove(&id) else { return Ok(Vec::new()) };
        list.into_iter()
            .map(|child| {
                child.downcast::<ProcessFn<K, V>>().map(|b| *b).map_err(|_| {
                    // The DSL's types line up by construction; this is our bug, not the user's.
                    StreamsError::Topology(format!("internal: node {id}'s children have another record type"))
                })
            })
            .collect()
    }

    pub(crate) fn push_child<K: 'static, V: 'static>(&mut self, parent: NodeId, f: ProcessFn<K, V>) {
        // Children are built before parents (reverse creation order); building runs from the
        // last node, so a parent's list is complete when the parent takes it.
        self.children.entry(parent).or_default().insert(0, Box::new(f));
    }

    pub fn kv_store(&self, name: &str) -> Result<Arc<Mutex<crate::store::LoggedKv>>, StreamsError> {
        match self.stores.get(name) {
            Some(TaskStore::Kv(s)) => Ok(s.clone()),
            _ => Err(StreamsError::Topology(format!("store '{name}' is not a key-value store of this task"))),
        }
    }

    pub fn global_store(&self, name: &str) -> Result<GlobalStore, StreamsError> {
        self.globals
            .get(name)
            .cloned()
            .ok_or_else(|| StreamsError::Topology(format!("global store '{name}' is not open in this instance")))
    }

    pub fn window_store(&self, name: &str) -> Result<Arc<Mutex<crate::store::LoggedWindow>>, StreamsError> {
        match self.stores.get(name) {
            Some(TaskStore::Window(s)) => Ok(s.clone()),
            _ => Err(StreamsError::Topology(format!("store '{name}' is not a window store of this task"))),
        }
    }

    pub fn session_store(&self, name: &str) -> Result<Arc<Mutex<crate::store::LoggedSession>>, StreamsError> {
        match self.stores.get(name) {
            Some(TaskStore::Session(s)) => Ok(s.clone()),
            _ => Err(StreamsError::Topology(format!("store '{name}' is not a session store of this task"))),
        }
    }
}

/// Builds one task's graph: every node of the sub-topology, children first.
pub(crate) fn build_task(topology: &Topology, st: &SubTopology, tb: &mut TaskBuild<'_>) -> Result<(), StreamsError> {
    for &id in st.nodes.iter().rev() {
        (topology.nodes[id].build)(tb)?;
    }
    // Flush hooks were pushed children first; flush parents first so that what a parent
    // releases reaches its children's buffers before those flush.
    tb.flushers.reverse();
    Ok(())
}
