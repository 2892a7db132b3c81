//! `spate groups`: list, describe, delete consumer groups and reset or delete their committed
//! offsets, like `kafka-consumer-groups.sh`. Exactly one action flag is given; a broker error is
//! printed with its Kafka error name and the command exits non-zero.
//!
//! Offsets can only be reset from outside a group while it has no members (Kafka's rule: a
//! member's next commit would overwrite the reset), so `--reset-offsets --execute` refuses an
//! active group; `--dry-run` prints the plan regardless.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use spate_client::admin::{GroupDescription, GroupState, OffsetAndMetadata, OffsetSpec};
use spate_client::{Admin, TopicPartition};

use crate::common::{print_out, BootstrapArgs};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("action").required(true).multiple(false)
    .args(["list", "describe", "reset_offsets", "delete", "delete_offsets"])))]
#[command(group(clap::ArgGroup::new("reset_spec").multiple(false)
    .args(["to_earliest", "to_latest", "to_offset", "to_datetime", "shift_by"])))]
#[command(after_help = "Examples:\n  spate groups --list --state\n  spate groups --describe --group g\n  \
spate groups --reset-offsets --group g --topic t:0,1 --to-earliest --execute\n  \
spate groups --reset-offsets --group g --all-topics --to-datetime 2024-05-01T12:00:00Z --dry-run")]
pub struct GroupsArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// List consumer groups, one per line (with --state: a GROUP STATE table).
    #[arg(long)]
    pub list: bool,
    /// Describe --group: its state, members, and per partition the committed offset, log end
    /// offset, lag and owning member. --state, --members and --offsets show only that part.
    #[arg(long)]
    pub describe: bool,
    /// Reset --group's committed offsets for --topic (or --all-topics) to --to-earliest,
    /// --to-latest, --to-offset, --to-datetime or --shift-by; prints the plan, and commits it
    /// with --execute (only while the group has no members).
    #[arg(long = "reset-offsets")]
    pub reset_offsets: bool,
    /// Delete --group (repeatable) and its committed offsets; the group must have no members.
    #[arg(long)]
    pub delete: bool,
    /// Delete --group's committed offsets for --topic.
    #[arg(long = "delete-offsets")]
    pub delete_offsets: bool,
    /// The group to act on (repeatable for --describe and --delete).
    #[arg(long)]
    pub group: Vec<String>,
    /// A topic, optionally with partitions: `t` or `t:0,2` (repeatable).
    #[arg(long, value_parser = parse_topic_spec)]
    pub topic: Vec<TopicSpec>,
    /// With --reset-offsets: every topic the group has committed offsets for.
    #[arg(long = "all-topics", conflicts_with = "topic")]
    pub all_topics: bool,
    /// --describe: show only the group's state. --list: show states, only these when given
    /// (comma-separated, e.g. `Stable,Empty`).
    #[arg(long, value_name = "STATES", num_args = 0..=1, default_missing_value = "")]
    pub state: Option<String>,
    /// --describe: show only the members (with --verbose, their assigned partitions).
    #[arg(long)]
    pub members: bool,
    /// --describe: show only the offsets table.
    #[arg(long)]
    pub offsets: bool,
    /// --describe --members: list each member's assignment.
    #[arg(long)]
    pub verbose: bool,
    /// Reset to the log start offset.
    #[arg(long = "to-earliest")]
    pub to_earliest: bool,
    /// Reset to the log end offset.
    #[arg(long = "to-latest")]
    pub to_latest: bool,
    /// Reset to this offset (clamped to the partition's earliest..latest).
    #[arg(long = "to-offset", value_name = "OFFSET")]
    pub to_offset: Option<i64>,
    /// Reset to the first offset whose timestamp is at or after this time, as
    /// YYYY-MM-DDTHH:MM:SS[.sss][Z|+HH:MM|-HH:MM] (no zone: UTC); the log end when none is.
    #[arg(long = "to-datetime", value_name = "ISO-8601", value_parser = parse_datetime_ms)]
    pub to_datetime: Option<i64>,
    /// Move the committed offset by N (negative: back), clamped to earliest..latest.
    #[arg(long = "shift-by", value_name = "N", allow_negative_numbers = true)]
    pub shift_by: Option<i64>,
    /// Print the reset plan without committing it (the default).
    #[arg(long = "dry-run", conflicts_with = "execute")]
    pub dry_run: bool,
    /// Commit the reset plan.
    #[arg(long)]
    pub execute: bool,
}

/// `--topic t` or `--topic t:0,1,2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub topic: String,
    /// Empty: every partition of the topic.
    pub partitions: Vec<i32>,
}

fn parse_topic_spec(raw: &str) -> Result<TopicSpec, String> {
    let (topic, partitions) = match raw.split_once(':') {
        Some((topic, list)) => {
            let partitions = list
                .split(',')
                .map(|p| match p.trim().parse::<i32>() {
                    Ok(p) if p >= 0 => Ok(p),
                    _ => Err(format!("'{p}' in --topic {raw} is not a partition number")),
                })
                .collect::<Result<Vec<i32>, String>>()?;
            (topic, partitions)
        }
        None => (raw, Vec::new()),
    };
    if topic.trim().is_empty() {
        return Err(format!("--topic {raw} names no topic"));
    }
    Ok(TopicSpec { topic: topic.trim().to_string(), partitions })
}

/// Milliseconds since the Unix epoch of `YYYY-MM-DDTHH:MM:SS[.fraction][Z|±HH:MM|±HHMM]`
/// (no zone: UTC). A small parser rather than a date-time crate: this is the one format the
/// Kafka tool accepts.
pub fn parse_datetime_ms(raw: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("'{raw}' is not YYYY-MM-DDTHH:MM:SS[.sss][Z|+HH:MM]: {why}");
    let s = raw.trim();
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return Err(bad("wrong layout"));
    }
    if b[16] != b':' {
        return Err(bad("wrong layout"));
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = &s[range];
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad(&format!("'{part}' is not a number")));
        }
        part.parse::<i64>().map_err(|e| bad(&e.to_string()))
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad("no such time"));
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("empty fraction of a second"));
        }
        // Milliseconds are what Kafka timestamps hold; finer digits are dropped.
        let ms: String = fraction[..digits].chars().chain("000".chars()).take(3).collect();
        millis = ms.parse::<i64>().map_err(|e| bad(&e.to_string()))?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "" | "Z" | "z" => 0,
        zone if zone.starts_with('+') || zone.starts_with('-') => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4
                || !digits.bytes().all(|c| c.is_ascii_digit())
                || (zone.len() == 6 && &zone[3..4] != ":")
            {
                return Err(bad("zone must be Z, +HH:MM or +HHMM"));
            }
            let (h, m) = (digits[..2].parse::<i64>().unwrap_or(99), digits[2..].parse::<i64>().unwrap_or(99));
            if h > 23 || m > 59 {
                return Err(bad("no such zone offset"));
            }
            sign * (h * 60 + m)
        }
        _ => return Err(bad("trailing text")),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Where `--reset-offsets` moves each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetSpec {
    Earliest,
    Latest,
    ToOffset(i64),
    /// Milliseconds since the epoch.
    ToDatetime(i64),
    ShiftBy(i64),
}

impl GroupsArgs {
    fn reset_spec(&self) -> Result<ResetSpec> {
        Ok(if self.to_earliest {
            ResetSpec::Earliest
        } else if self.to_latest {
            ResetSpec::Latest
        } else if let Some(offset) = self.to_offset {
            ResetSpec::ToOffset(offset)
        } else if let Some(ts) = self.to_datetime {
            ResetSpec::ToDatetime(ts)
        } else if let Some(n) = self.shift_by {
            ResetSpec::ShiftBy(n)
        } else {
            bail!("--reset-offsets needs one of --to-earliest, --to-latest, --to-offset, --to-datetime, --shift-by")
        })
    }

    fn one_group(&self, action: &str) -> Result<&str> {
        match self.group.as_slice() {
            [group] => Ok(group),
            [] => bail!("--{action} needs --group"),
            _ => bail!("--{action} takes one --group"),
        }
    }
}

/// What the plan needs to know of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub committed: Option<i64>,
    /// For `--to-datetime`: the first offset at or after the time, `None` when no record is.
    pub at_timestamp: Option<i64>,
}

/// The new committed offset of one partition, as Kafka computes it: explicit targets are clamped
/// to the log's range, and shifting needs a committed offset to shift.
pub fn new_offset(spec: ResetSpec, tp: &TopicPartition, o: &PartitionOffsets) -> Result<i64> {
    let clamp = |offset: i64| offset.clamp(o.log_start_offset, o.log_end_offset.max(o.log_start_offset));
    Ok(match spec {
        ResetSpec::Earliest => o.log_start_offset,
        ResetSpec::Latest => o.log_end_offset,
        ResetSpec::ToOffset(offset) => clamp(offset),
        ResetSpec::ToDatetime(_) => o.at_timestamp.map_or(o.log_end_offset, clamp),
        ResetSpec::ShiftBy(n) => match o.committed {
            Some(current) => clamp(current.saturating_add(n)),
            None => bail!("cannot shift the offset of {tp}: the group has no committed offset for it"),
        },
    })
}

pub async fn run(args: GroupsArgs) -> Result<()> {
    let admin = args.bootstrap.admin("spate-consumer-groups").await?;
    let out = if args.list {
        list(&admin, &args).await?
    } else if args.describe {
        if args.group.is_empty() {
            bail!("--describe needs --group");
        }
        let mut out = String::new();
        for group in &args.group {
            out.push_str(&describe(&admin, &args, group).await?);
        }
        out
    } else if args.reset_offsets {
        reset_offsets(&admin, &args).await?
    } else if args.delete {
        delete(&admin, &args).await?
    } else {
        delete_offsets(&admin, &args).await?
    };
    print_out(&out);
    Ok(())
}

async fn list(admin: &Admin, args: &GroupsArgs) -> Result<String> {
    let filter: Vec<GroupState> = match args.state.as_deref() {
        Some(states) => {
            states.split(',').map(str::trim).filter(|s| !s.is_empty()).map(parse_state).collect::<Result<_>>()?
        }
        None => Vec::new(),
    };
    let groups = admin.list_groups(&filter).await?;
    if args.state.is_none() {
        return Ok(groups.iter().map(|g| format!("{}\n", g.group_id)).collect());
    }
    let rows = groups
        .iter()
        .map(|g| vec![g.group_id.clone(), g.state.as_ref().map_or("-".to_string(), |s| s.to_string())])
        .collect();
    Ok(table(&["GROUP", "STATE"], rows))
}

/// A state as the user typed it, case-insensitively, by Kafka's names.
fn parse_state(raw: &str) -> Result<GroupState> {
    const KNOWN: [&str; 5] = ["Empty", "Stable", "PreparingRebalance", "CompletingRebalance", "Dead"];
    match KNOWN.iter().find(|k| k.eq_ignore_ascii_case(raw)) {
        Some(k) => Ok(GroupState::parse(k)),
        None => bail!("unknown group state '{raw}' (one of {})", KNOWN.join(", ")),
    }
}

/// Describes a group, failing as Kafka does when it does not exist.
async fn existing_group(admin: &Admin, group: &str) -> Result<GroupDescription> {
    let description = admin.describe_group(group).await.with_context(|| format!("describing group {group}"))?;
    if description.state == GroupState::Dead {
        bail!("consumer group '{group}' does not exist");
    }
    Ok(description)
}

async fn describe(admin: &Admin, args: &GroupsArgs, group: &str) -> Result<String> {
    let description = existing_group(admin, group).await?;
    let (show_state, show_members, show_offsets) = match (args.state.is_some(), args.members, args.offsets) {
        (false, false, false) => (true, true, true),
        selected => selected,
    };
    let mut out = String::new();
    if show_state {
        let coordinator = admin
            .cluster()
            .metadata()
            .brokers
            .get(&description.coordinator)
            .map_or_else(|| "-".to_string(), |b| format!("{} ({})", b.addr(), b.node_id));
        let strategy = if description.protocol.is_empty() { "-".to_string() } else { description.protocol.clone() };
        out.push_str(&table(
            &["GROUP", "COORDINATOR (ID)", "ASSIGNMENT-STRATEGY", "STATE", "#MEMBERS"],
            vec![vec![
                group.to_string(),
                coordinator,
                strategy,
                description.state.to_string(),
                description.members.len().to_string(),
            ]],
        ));
        out.push('\n');
    }
    if show_members {
        if description.members.is_empty() {
            writeln!(out, "Consumer group '{group}' has no active members.\n")?;
        } else {
            let mut headers = vec!["GROUP", "CONSUMER-ID", "GROUP-INSTANCE-ID", "HOST", "CLIENT-ID", "#PARTITIONS"];
            if args.verbose {
                headers.push("ASSIGNMENT");
            }
            let rows = description
                .members
                .iter()
                .map(|m| {
                    let mut row = vec![
                        group.to_string(),
                        m.member_id.clone(),
                        m.group_instance_id.clone().unwrap_or_else(|| "-".into()),
                        m.client_host.clone(),
                        m.client_id.clone(),
                        m.assignment.len().to_string(),
                    ];
                    if args.verbose {
                        row.push(assignment_summary(&m.assignment));
                    }
                    row
                })
                .collect();
            out.push_str(&table(&headers, rows));
            out.push('\n');
        }
    }
    if show_offsets {
        out.push_str(&offsets_table(admin, group, &description).await?);
    }
    Ok(out)
}

/// `t(0,1),u(2)`, or `-` for none.
fn assignment_summary(assignment: &[TopicPartition]) -> String {
    if assignment.is_empty() {
        return "-".into();
    }
    let mut by_topic: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for tp in assignment {
        by_topic.entry(tp.topic.as_str()).or_default().push(tp.partition.to_string());
    }
    by_topic.iter().map(|(t, ps)| format!("{t}({})", ps.join(","))).collect::<Vec<_>>().join(",")
}

/// Log end offsets of partitions; a topic whose offsets cannot be listed (deleted since the
/// commit) is left out rather than failing the whole table.
async fn log_end_offsets(admin: &Admin, partitions: &BTreeSet<TopicPartition>) -> BTreeMap<TopicPartition, i64> {
    let mut by_topic: BTreeMap<&str, Vec<(TopicPartition, OffsetSpec)>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(tp.topic.as_str()).or_default().push((tp.clone(), OffsetSpec::Latest));
    }
    let mut out = BTreeMap::new();
    for (topic, wanted) in by_topic {
        match admin.list_offsets(&wanted).await {
            Ok(offsets) => out.extend(offsets.into_iter().map(|(tp, info)| (tp, info.offset))),
            Err(e) => tracing::warn!(topic, error = %e, "could not list log end offsets"),
        }
    }
    out
}

/// One row per partition the group has committed or been assigned, as `kafka-consumer-groups.sh
/// --describe --offsets` prints it.
async fn offsets_table(admin: &Admin, group: &str, description: &GroupDescription) -> Result<String> {
    let committed = admin.list_group_offsets(group, None).await.with_context(|| format!("offsets of group {group}"))?;
    let mut owner: BTreeMap<&TopicPartition, (&str, &str, &str)> = BTreeMap::new();
    for m in &description.members {
        for tp in &m.assignment {
            owner.insert(tp, (m.member_id.as_str(), m.client_host.as_str(), m.client_id.as_str()));
        }
    }
    let partitions: BTreeSet<TopicPartition> = committed.keys().chain(owner.keys().copied()).cloned().collect();
    if partitions.is_empty() {
        return Ok(format!("Consumer group '{group}' has no committed offsets and no assigned partitions.\n"));
    }
    let log_end = log_end_offsets(admin, &partitions).await;
    let rows = partitions
        .iter()
        .map(|tp| {
            let current = committed.get(tp).map(|o| o.offset);
            let end = log_end.get(tp).copied();
            let (member, host, client) = owner.get(tp).copied().unwrap_or(("-", "-", "-"));
            vec![
                group.to_string(),
                tp.topic.clone(),
                tp.partition.to_string(),
                dash(current),
                dash(end),
                dash(lag(current, end)),
                member.to_string(),
                host.to_string(),
                client.to_string(),
            ]
        })
        .collect();
    Ok(table(
        &["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID", "HOST", "CLIENT-ID"],
        rows,
    ))
}

/// Records between the committed offset and the log end (never negative: the log can be
/// truncated below a stale commit).
fn lag(committed: Option<i64>, log_end_offset: Option<i64>) -> Option<i64> {
    Some((log_end_offset? - committed?).max(0))
}

fn dash(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The partitions `--topic` / `--all-topics` name.
async fn selected_partitions(admin: &Admin, args: &GroupsArgs, group: &str) -> Result<Vec<TopicPartition>> {
    let mut out = BTreeSet::new();
    if args.all_topics {
        out.extend(admin.list_group_offsets(group, None).await?.into_keys());
        if out.is_empty() {
            bail!("group {group} has no committed offsets, so --all-topics selects nothing");
        }
    }
    for spec in &args.topic {
        let topic = admin.cluster().topic(&spec.topic).await.with_context(|| format!("topic {}", spec.topic))?;
        if spec.partitions.is_empty() {
            out.extend(topic.partitions.iter().map(|p| TopicPartition::new(spec.topic.clone(), p.partition)));
        }
        for &p in &spec.partitions {
            if topic.partition(p).is_none() {
                bail!("topic {} has no partition {p}", spec.topic);
            }
            out.insert(TopicPartition::new(spec.topic.clone(), p));
        }
    }
    if out.is_empty() {
        bail!("name the partitions with --topic T[:P,...] or --all-topics");
    }
    Ok(out.into_iter().collect())
}

async fn reset_offsets(admin: &Admin, args: &GroupsArgs) -> Result<String> {
    let group = args.one_group("reset-offsets")?;
    let spec = args.reset_spec()?;
    let description = admin.describe_group(group).await.with_context(|| format!("describing group {group}"))?;
    if args.execute && description.state.is_active() {
        bail!(
            "assignments can only be reset if the group '{group}' is inactive, but the current state is {}",
            description.state
        );
    }
    if !args.execute && !args.dry_run {
        eprintln!("WARN: No action will be performed as the --execute option is missing. Add --execute to reset.");
    }
    let partitions = selected_partitions(admin, args, group).await?;
    let spec_for = |s: OffsetSpec| partitions.iter().map(|tp| (tp.clone(), s)).collect::<Vec<_>>();
    let earliest = admin.list_offsets(&spec_for(OffsetSpec::Earliest)).await?;
    let latest = admin.list_offsets(&spec_for(OffsetSpec::Latest)).await?;
    let at_timestamp = match spec {
        ResetSpec::ToDatetime(ts) => admin.list_offsets(&spec_for(OffsetSpec::Timestamp(ts))).await?,
        _ => BTreeMap::new(),
    };
    let committed = admin.list_group_offsets(group, Some(&partitions)).await?;
    let mut plan = BTreeMap::new();
    for tp in &partitions {
        let offsets = PartitionOffsets {
            log_start_offset: earliest
                .get(tp)
                .map(|i| i.offset)
                .with_context(|| format!("no earliest offset of {tp}"))?,
            log_end_offset: latest.get(tp).map(|i| i.offset).with_context(|| format!("no latest offset of {tp}"))?,
            committed: committed.get(tp).map(|o| o.offset),
            at_timestamp: at_timestamp.get(tp).map(|i| i.offset).filter(|o| *o >= 0),
        };
        plan.insert(tp.clone(), OffsetAndMetadata::new(new_offset(spec, tp, &offsets)?));
    }
    if args.execute {
        let results = admin.alter_group_offsets(group, &plan).await?;
        let failed: Vec<String> =
            results.iter().filter_map(|(tp, r)| r.as_ref().err().map(|e| format!("{tp}: {e}"))).collect();
        if !failed.is_empty() {
            bail!("resetting offsets of group {group} failed for {}", failed.join("; "));
        }
    }
    let rows = plan
        .iter()
        .map(|(tp, o)| vec![group.to_string(), tp.topic.clone(), tp.partition.to_string(), o.offset.to_string()])
        .collect();
    Ok(table(&["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"], rows))
}

async fn delete(admin: &Admin, args: &GroupsArgs) -> Result<String> {
    if args.group.is_empty() {
        bail!("--delete needs --group");
    }
    let ids: Vec<&str> = args.group.iter().map(String::as_str).collect();
    let results = admin.delete_groups(&ids).await?;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(g, r)| r.as_ref().err().map(|e| format!("* Group '{g}' could not be deleted due to: {e}")))
        .collect();
    if !failed.is_empty() {
        bail!("deletion of some consumer groups failed:\n{}", failed.join("\n"));
    }
    let names: Vec<String> = ids.iter().map(|g| format!("'{g}'")).collect();
    Ok(format!("Deletion of requested consumer groups ({}) was successful.\n", names.join(", ")))
}

async fn delete_offsets(admin: &Admin, args: &GroupsArgs) -> Result<String> {
    let group = args.one_group("delete-offsets")?;
    if args.topic.is_empty() {
        bail!("--delete-offsets needs --topic");
    }
    let partitions = selected_partitions(admin, args, group).await?;
    let results = admin.delete_group_offsets(group, &partitions).await?;
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|(tp, r)| {
            let status = match r {
                Ok(()) => "Successful".to_string(),
                Err(e) => format!("Error: {e}"),
            };
            vec![tp.topic.clone(), tp.partition.to_string(), status]
        })
        .collect();
    let failed = results.values().filter(|r| r.is_err()).count();
    let mut out = table(&["TOPIC", "PARTITION", "STATUS"], rows);
    if failed > 0 {
        print_out(&out);
        bail!("deleting {failed} of {} offsets of group {group} failed", results.len());
    }
    out.insert_str(0, &format!("Request succeeded for deleting offsets of group {group}.\n\n"));
    Ok(out)
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 == widths.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: GroupsArgs,
    }

    fn args(argv: &[&str]) -> Result<GroupsArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("groups").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn topic_specs_name_partitions_optionally() {
        assert_eq!(parse_topic_spec("t"), Ok(TopicSpec { topic: "t".into(), partitions: vec![] }));
        assert_eq!(parse_topic_spec("t:0,2"), Ok(TopicSpec { topic: "t".into(), partitions: vec![0, 2] }));
        assert!(parse_topic_spec("t:x").is_err());
        assert!(parse_topic_spec("t:-1").is_err());
        assert!(parse_topic_spec(":1").is_err());
    }

    #[test]
    fn datetimes_parse_to_epoch_millis() {
        assert_eq!(parse_datetime_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_datetime_ms("1970-01-01T00:00:00"), Ok(0));
        assert_eq!(parse_datetime_ms("2024-05-01T12:00:00Z"), Ok(1_714_564_800_000));
        assert_eq!(parse_datetime_ms("2024-05-01T12:00:00.250Z"), Ok(1_714_564_800_250));
        assert_eq!(parse_datetime_ms("2024-05-01T12:00:00.5"), Ok(1_714_564_800_500));
        assert_eq!(parse_datetime_ms("2024-05-01T12:00:00.123456Z"), Ok(1_714_564_800_123));
        assert_eq!(parse_datetime_ms("2024-05-01T14:00:00+02:00"), Ok(1_714_564_800_000));
        assert_eq!(parse_datetime_ms("2024-05-01T07:30:00-0430"), Ok(1_714_564_800_000));
        assert_eq!(parse_datetime_ms("2000-02-29T00:00:00Z"), Ok(951_782_400_000));
        assert_eq!(parse_datetime_ms("1969-12-31T23:59:59Z"), Ok(-1000));
        for bad in [
            "2024-05-01",
            "2024-13-01T00:00:00",
            "2023-02-29T00:00:00",
            "2024-05-01T24:00:00",
            "2024-05-01T12:00:00.",
            "2024-05-01T12:00:00+2",
            "2024-05-01T12:00:00 UTC",
            "2024-05-01T1a:00:00",
            "2024/05/01T12:00:00",
        ] {
            assert!(parse_datetime_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn days_from_civil_matches_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1600, 1, 1), -135_140);
    }

    #[test]
    fn reset_plans_follow_kafka() {
        let tp = TopicPartition::new("t", 0);
        let o =
            PartitionOffsets { log_start_offset: 10, log_end_offset: 100, committed: Some(50), at_timestamp: Some(70) };
        assert_eq!(new_offset(ResetSpec::Earliest, &tp, &o).unwrap(), 10);
        assert_eq!(new_offset(ResetSpec::Latest, &tp, &o).unwrap(), 100);
        assert_eq!(new_offset(ResetSpec::ToOffset(5), &tp, &o).unwrap(), 10, "clamped up to the log start");
        assert_eq!(new_offset(ResetSpec::ToOffset(500), &tp, &o).unwrap(), 100, "clamped down to the log end");
        assert_eq!(new_offset(ResetSpec::ToOffset(42), &tp, &o).unwrap(), 42);
        assert_eq!(new_offset(ResetSpec::ShiftBy(-45), &tp, &o).unwrap(), 10);
        assert_eq!(new_offset(ResetSpec::ShiftBy(-5), &tp, &o).unwrap(), 45);
        assert_eq!(new_offset(ResetSpec::ShiftBy(i64::MAX), &tp, &o).unwrap(), 100);
        assert_eq!(new_offset(ResetSpec::ToDatetime(0), &tp, &o).unwrap(), 70);
        let none = PartitionOffsets { committed: None, at_timestamp: None, ..o };
        assert_eq!(new_offset(ResetSpec::ToDatetime(0), &tp, &none).unwrap(), 100, "no record that late: log end");
        assert!(new_offset(ResetSpec::ShiftBy(1), &tp, &none).unwrap_err().to_string().contains("no committed offset"));
    }

    #[test]
    fn lag_is_never_negative_and_needs_both_offsets() {
        assert_eq!(lag(Some(3), Some(10)), Some(7));
        assert_eq!(lag(Some(12), Some(10)), Some(0));
        assert_eq!(lag(None, Some(10)), None);
        assert_eq!(lag(Some(1), None), None);
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONG-HEADER", "C"], vec![vec!["xyz".into(), "1".into(), "last".into()]]);
        assert_eq!(t, "A    LONG-HEADER  C\nxyz  1            last\n");
        assert_eq!(assignment_summary(&[]), "-");
        assert_eq!(
            assignment_summary(&[
                TopicPartition::new("t", 0),
                TopicPartition::new("t", 1),
                TopicPartition::new("u", 2)
            ]),
            "t(0,1),u(2)"
        );
    }

    #[test]
    fn flags_take_one_action_and_one_reset_spec() {
        assert!(args(&[]).is_err(), "an action is required");
        assert!(args(&["--list", "--delete"]).is_err());
        assert!(args(&["--reset-offsets", "--to-earliest", "--to-latest"]).is_err());
        assert!(args(&["--reset-offsets", "--dry-run", "--execute"]).is_err());
        assert!(args(&["--reset-offsets", "--all-topics", "--topic", "t"]).is_err());
        let a = args(&["--reset-offsets", "--group", "g", "--topic", "t:1", "--shift-by", "-3", "--execute"]).unwrap();
        assert_eq!(a.reset_spec().unwrap(), ResetSpec::ShiftBy(-3));
        assert_eq!(a.topic, vec![TopicSpec { topic: "t".into(), partitions: vec![1] }]);
        let a = args(&["--reset-offsets", "--group", "g", "--to-datetime", "1970-01-01T00:00:01Z"]).unwrap();
        assert_eq!(a.reset_spec().unwrap(), ResetSpec::ToDatetime(1000));
        assert!(args(&["--reset-offsets", "--to-datetime", "yesterday"]).is_err());
        assert!(args(&["--reset-offsets", "--group", "g"]).unwrap().reset_spec().is_err());
        assert_eq!(args(&["--list", "--state"]).unwrap().state.as_deref(), Some(""));
        assert_eq!(args(&["--list", "--state", "Stable,Empty"]).unwrap().state.as_deref(), Some("Stable,Empty"));
        assert_eq!(args(&["--list"]).unwrap().state, None);
        assert!(parse_state("stable").is_ok());
        assert!(parse_state("Sleeping").is_err());
    }
}
