//! Config checks and task splitting (the task itself is driven in connect/tests/jdbc_source.rs).

use super::*;

fn props(pairs: &[(&str, &str)]) -> Props {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn modes_need_their_columns_and_urls_must_be_known() {
    let base = [("connection.url", "sqlite:/tmp/x.db"), ("topic.prefix", "db-"), ("table.whitelist", "a")];
    let check = |extra: &[(&str, &str)]| {
        let mut p = props(&base);
        p.extend(props(extra));
        JdbcSourceConnector.validate(&p)
    };
    assert!(check(&[("mode", "bulk")]).is_empty());
    assert_eq!(check(&[("mode", "incrementing")])[0].0, "incrementing.column.name");
    assert_eq!(
        check(&[("mode", "timestamp+incrementing"), ("incrementing.column.name", "id")])[0].0,
        "timestamp.column.name"
    );
    assert_eq!(check(&[("mode", "sometimes")])[0].0, "mode");
    assert_eq!(check(&[("mode", "bulk"), ("connection.url", "mysql://x")])[0].0, "connection.url");
    assert_eq!(check(&[("mode", "bulk"), ("query", "SELECT 1")])[0].0, "query");
}

#[test]
fn tables_are_dealt_round_robin_and_a_query_gets_one_task() {
    let p = props(&[
        ("connection.url", "sqlite:/tmp/x.db"),
        ("topic.prefix", "db-"),
        ("mode", "bulk"),
        ("table.whitelist", "a,b,c,a,d,e,b"),
        ("table.blacklist", "d"),
    ]);
    let tasks = JdbcSourceConnector.task_configs(&p, 3).unwrap();
    let tables: Vec<&str> = tasks.iter().map(|t| t["tables"].as_str()).collect();
    assert_eq!(tables, vec!["a,e", "b", "c"]);
    assert_eq!(JdbcSourceConnector.task_configs(&p, 10).unwrap().len(), 4);
    let mut q = p.clone();
    q.remove("table.whitelist");
    q.insert("query".into(), "SELECT 1 AS x".into());
    assert_eq!(JdbcSourceConnector.task_configs(&q, 4).unwrap().len(), 1);
}
