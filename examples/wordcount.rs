//! Kafka's WordCountDemo on spate-streams: lines from `streams-plaintext-input` are split into
//! words and counted; every count update goes to `streams-wordcount-output` (key = word, value =
//! count as an 8-byte big-endian long, like Kafka's `LongSerializer`).
//!
//! ```text
//! cargo run --release -p spate-examples --example wordcount -- --bootstrap-server 127.0.0.1:9092
//! printf 'all streams lead to kafka\nhello kafka streams\n' | kcat -b 127.0.0.1:9092 -P -t streams-plaintext-input
//! kcat -b 127.0.0.1:9092 -C -t streams-wordcount-output -e -o beginning -s value=q -f '%k %s\n'
//! ```

use spate_examples::streams_apps;
use spate_examples::{run_streams, StreamsArgs};

const INPUT: &str = "streams-plaintext-input";
const OUTPUT: &str = "streams-wordcount-output";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = StreamsArgs::parse(&[])?;
    let topology = streams_apps::wordcount(INPUT, OUTPUT)?;
    run_streams("streams-wordcount", &args, topology, &[args.topic(INPUT), args.topic(OUTPUT)]).await
}
