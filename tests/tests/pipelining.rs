//! Responses on one connection come back in request order, and a response that is ready is not
//! held back by a later request that is still waiting (an acks=all produce, a long-poll fetch).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use spate_client::admin::{AdminConfig, NewTopic};
use spate_client::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use spate_client::protocol::messages::{ApiVersionsRequest, BrokerId, FetchRequest, TopicName};
use spate_client::protocol::{encode_request, str_bytes, ApiKey};
use spate_client::Admin;
use spate_e2e::TestBroker;

/// Reads one response frame and returns its correlation id.
fn read_correlation_id(stream: &mut TcpStream) -> std::io::Result<i32> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body)?;
    Ok(i32::from_be_bytes(body[..4].try_into().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_response_is_not_held_back_by_a_parked_one() {
    let broker = TestBroker::start(&[]).unwrap();
    let admin = Admin::new(AdminConfig { bootstrap_servers: vec![broker.bootstrap()], ..AdminConfig::default() })
        .await
        .unwrap();
    admin.create_topic(NewTopic::new("parked", 1, 1)).await.unwrap();

    // Request 1 is answered at once; request 2, a fetch on an empty partition, parks for 15 s.
    // Both go out in one write so the broker reads them together.
    let mut out = BytesMut::new();
    encode_request(ApiKey::ApiVersions, 0, 1, Some("t"), &ApiVersionsRequest::default(), &mut out).unwrap();
    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(15_000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default().with_topic(TopicName(str_bytes("parked"))).with_partitions(vec![
            FetchPartition::default().with_partition(0).with_fetch_offset(0).with_partition_max_bytes(1 << 20),
        ])]);
    encode_request(ApiKey::Fetch, 12, 2, Some("t"), &fetch, &mut out).unwrap();

    let mut stream = TcpStream::connect(broker.addr).unwrap();
    stream.write_all(&out).unwrap();
    // Well before the fetch's 15 s: the ApiVersions answer must not wait for it.
    stream.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let first =
        read_correlation_id(&mut stream).expect("the ready ApiVersions response was held back behind the parked fetch");
    assert_eq!(first, 1);
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(read_correlation_id(&mut stream).unwrap(), 2, "responses come back in request order");
}
