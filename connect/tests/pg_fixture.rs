//! The PostgreSQL test fixture itself works: a server starts, takes SQL, and has logical decoding.

#[path = "common/postgres.rs"]
mod postgres;

#[test]
fn a_throwaway_server_starts_with_logical_decoding() {
    let pg = postgres::PgServer::start();
    let url = pg.create_database("fixture");
    assert!(url.ends_with("/fixture"), "{url}");
    assert_eq!(pg.psql("fixture", "SHOW wal_level").unwrap().trim(), "logical", "{}", pg.log());
    pg.psql("fixture", "CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1), (2)").unwrap();
    assert_eq!(pg.psql("fixture", "SELECT count(*) FROM t").unwrap().trim(), "2");
}
