//! Choosing a partition for a record, exactly as the Java client does so that keyed records from
//! Spate and Java producers land on the same partitions: murmur2 of the key for keyed records,
//! and the sticky partitioner (KIP-480) for records without a key, which fills one partition's
//! batch before moving to another so batches are large even with low linger.

use rand::Rng;

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed 0x9747b28c.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    // Java's switch falls through from 3 to 1.
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which overflows on `i32::MIN`).
pub fn to_positive(n: i32) -> i32 {
    n & 0x7fff_ffff
}

/// The partition of a keyed record: `toPositive(murmur2(key)) % numPartitions`.
pub fn partition_for_key(key: &[u8], num_partitions: i32) -> i32 {
    assert!(num_partitions > 0, "a topic has at least one partition");
    to_positive(murmur2(key)) % num_partitions
}

/// The next sticky partition once `previous` got a new batch: uniformly random among the others
/// (any partition when there is only one, or no previous).
pub fn next_sticky_partition(rng: &mut impl Rng, num_partitions: i32, previous: i32) -> i32 {
    assert!(num_partitions > 0, "a topic has at least one partition");
    if num_partitions == 1 {
        return 0;
    }
    if previous < 0 || previous >= num_partitions {
        return rng.random_range(0..num_partitions);
    }
    // Draw from n-1 values and skip over the previous one: uniform over the others.
    let pick = rng.random_range(0..num_partitions - 1);
    if pick >= previous {
        pick + 1
    } else {
        pick
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn murmur2_matches_kafka_utils_test_vectors() {
        // From Kafka's clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java.
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
            // Used by other ports of Kafka's murmur2 (cross-checked against the Java client).
            (b"1", -1993445489),
            (b"12", 126087238),
            (b"123", -267702483),
            (b"1234", -1614185708),
            (b"12345", -1188365604),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), *expected, "murmur2({:?})", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn keyed_partition_is_positive_modulo() {
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(-1), i32::MAX);
        // toPositive(-973932308) = 1173551340; % 10 = 0, % 7 = 1173551340 % 7.
        assert_eq!(partition_for_key(b"21", 10), 1_173_551_340 % 10);
        assert_eq!(partition_for_key(b"21", 7), 1_173_551_340 % 7);
        for n in 1..50 {
            let p = partition_for_key(b"foobar", n);
            assert!((0..n).contains(&p));
        }
    }

    #[test]
    fn sticky_partition_moves_to_a_different_partition_uniformly() {
        let seed = 7;
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut counts = [0u32; 4];
        let mut previous = 2;
        for _ in 0..4000 {
            let next = next_sticky_partition(&mut rng, 4, previous);
            assert_ne!(next, previous, "seed {seed}");
            counts[next as usize] += 1;
            previous = next;
        }
        // Every partition is visited (a loose bound; the draw is uniform over the others).
        assert!(counts.iter().all(|&c| c > 500), "seed {seed}: {counts:?}");
        assert_eq!(next_sticky_partition(&mut rng, 1, 0), 0);
        assert!((0..3).contains(&next_sticky_partition(&mut rng, 3, -1)));
    }
}
