//! Tests of `batch.rs`: batches asked and answered over an in-memory store.

use super::*;
use crate::sample::relay::tests::packets;
use crate::store::Repo;
use edgecap_common::lock;

/// The asking replica on an in-memory store, its answer watch running, and a watch on the
/// batches it writes.
struct Asking {
    repo: Repo,
    asking: Arc<Relay>,
    cancel: tokio_util::sync::CancellationToken,
    runner: tokio::task::JoinHandle<()>,
    batches: edgecap_state::WatchStream,
}

async fn asking() -> Asking {
    let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
    let asking = Arc::new(Relay::new(repo.clone(), Duration::from_secs(5)));
    let cancel = tokio_util::sync::CancellationToken::new();
    let runner = tokio::spawn(asking.clone().run(cancel.clone()));
    let batches = repo.store().watch(&repo.sample_batches_prefix(), 0).await.unwrap();
    Asking { repo, asking, cancel, runner, batches }
}

type Answers = tokio::task::JoinHandle<Vec<Result<SampleAnswer, String>>>;

impl Asking {
    /// Asks `agents` for up to 5000 packets each (in a task, answered within `timeout`);
    /// returns that task and the batch it wrote, as another replica reads it.
    async fn ask(&mut self, agents: &'static [&'static str], timeout: Duration) -> (Answers, Batch) {
        let query = pb::SampleQuery { packet_limit: 5000, ..Default::default() };
        let asking = self.asking.clone();
        let answers = tokio::spawn(async move { asking.sample_many(agents, query, timeout).await });
        let Some(Ok(edgecap_state::WatchEvent::Put(kv))) = self.batches.next().await else { panic!("no batch") };
        (answers, Batch::decode(kv.value.as_slice()).unwrap())
    }
}

/// One batch asks three agents; the other replica packs two answers (one of 3 MB, over
/// several keys under the limit, one small) and a stray agent's into its keys; the third
/// agent never answers and times out alone.
#[tokio::test]
async fn a_batch_is_answered_in_packed_keys_and_a_silent_agent_times_out_alone() {
    let mut setup = asking().await;
    let (answers, batch) = setup.ask(&["ams01-a", "fra01-a", "ord01-a"], Duration::from_millis(1500)).await;
    let Asking { repo, asking, cancel, runner, .. } = setup;
    let other = Relay::new(repo.clone(), Duration::from_secs(5));
    assert_eq!(batch.agents, ["ams01-a", "fra01-a", "ord01-a"]);
    let request = batch.query.unwrap().request_id;
    assert!(request.starts_with(&format!("{}/", asking.instance)));

    let mut writer = Writer::new(&other, &request);
    let big = pb::SampleChunk::split(&request, packets(3000, 1000), 3000, pb::LookbackStats::default());
    let small = pb::SampleChunk::split(&request, packets(5, 100), 7, pb::LookbackStats::default());
    let stray = pb::SampleChunk::failure(&request, "not asked".into());
    let chunk = |agent: &str, seq: usize, chunk: &pb::SampleChunk| AgentChunk {
        agent_id: agent.into(),
        seq: seq as u32,
        chunk: Some(chunk.clone()),
    };
    assert!(writer.add(chunk("zzz01-a", 0, &stray)).await);
    for (seq, c) in small.iter().enumerate() {
        assert!(writer.add(chunk("fra01-a", seq, c)).await);
    }
    for (seq, c) in big.iter().enumerate() {
        assert!(writer.add(chunk("ams01-a", seq, c)).await);
    }
    assert!(writer.flush().await);
    let keys = repo.store().list(&asking.answers_prefix()).await.unwrap();
    assert!(keys.len() >= 3, "3 MB of answers over several keys: {}", keys.len());
    assert!(keys.iter().all(|kv| kv.value.len() < edgecap_proto::CHUNK_BYTES + 64 * 1024), "every key under the limit");

    let answers = answers.await.unwrap();
    let ams = answers[0].as_ref().unwrap();
    assert_eq!(ams.packets.len(), 3000);
    assert!(ams.packets.iter().enumerate().all(|(i, p)| p.ts_ns == i as u64 && p.data.len() == 1000));
    let fra = answers[1].as_ref().unwrap();
    assert_eq!((fra.packets.len(), fra.matched), (5, 7));
    let ord = answers[2].as_ref().unwrap_err();
    assert!(ord.contains("did not answer within"), "{ord}");
    assert!(lock(&asking.waiting).is_empty());
    cancel.cancel();
    runner.await.unwrap();
}

/// What another replica wrote may be damaged or odd: a key that is not a packed answer,
/// an entry without its chunk, an entry for an agent not asked. Each is passed over
/// (logged), and the answer written after them arrives whole.
#[tokio::test]
async fn damaged_relayed_answers_are_passed_over_and_the_good_one_arrives() {
    let mut setup = asking().await;
    let (answers, batch) = setup.ask(&["ams01-a"], Duration::from_secs(5)).await;
    let Asking { repo, cancel, runner, .. } = setup;
    let other = Relay::new(repo.clone(), Duration::from_secs(5));
    let request = batch.query.unwrap().request_id;
    let lease = repo.store().grant_lease(Duration::from_secs(30)).await.unwrap();
    repo.put_sample_batch_answer(&request, "broken", 0, b"\xff\xff\xff not protobuf".to_vec(), lease).await.unwrap();
    let odd = Packed {
        chunks: vec![
            AgentChunk { agent_id: "ams01-a".into(), seq: 0, chunk: None },
            AgentChunk {
                agent_id: "not-asked".into(),
                seq: 0,
                chunk: Some(pb::SampleChunk::failure(&request, "x".into())),
            },
        ],
    };
    repo.put_sample_batch_answer(&request, "odd", 0, odd.encode_to_vec(), lease).await.unwrap();
    let mut writer = Writer::new(&other, &request);
    for (seq, c) in
        pb::SampleChunk::split(&request, packets(10, 100), 10, pb::LookbackStats::default()).into_iter().enumerate()
    {
        assert!(writer.add(AgentChunk { agent_id: "ams01-a".into(), seq: seq as u32, chunk: Some(c) }).await);
    }
    assert!(writer.flush().await);
    let answers = answers.await.unwrap();
    let answer = answers[0].as_ref().unwrap();
    assert_eq!((answer.packets.len(), answer.matched), (10, 10));
    assert!(answer.packets.iter().enumerate().all(|(i, p)| p.ts_ns == i as u64 && p.data.len() == 100));
    cancel.cancel();
    runner.await.unwrap();
}

/// Two replicas answer for the same agent (it counted as connected to both during a
/// reconnect): one "not connected", the other its packets. The packets win, unmixed.
#[tokio::test]
async fn of_two_replicas_answering_for_one_agent_the_answer_wins() {
    let mut setup = asking().await;
    let (answers, batch) = setup.ask(&["ams01-a"], Duration::from_secs(3)).await;
    let Asking { repo, cancel, runner, .. } = setup;
    let (gone, here) =
        (Relay::new(repo.clone(), Duration::from_secs(5)), Relay::new(repo.clone(), Duration::from_secs(5)));
    let request = batch.query.unwrap().request_id;
    let big = pb::SampleChunk::split(&request, packets(3000, 1000), 3000, pb::LookbackStats::default());
    let mut first = Writer::new(&here, &request);
    // The real answer's first chunks, then the other replica's failure, then the rest.
    let (head, tail) = big.split_at(1);
    for (seq, c) in head.iter().enumerate() {
        assert!(first.add(AgentChunk { agent_id: "ams01-a".into(), seq: seq as u32, chunk: Some(c.clone()) }).await);
    }
    assert!(first.flush().await);
    let mut second = Writer::new(&gone, &request);
    let failure = pb::SampleChunk::failure(&request, "agent disconnected before the query was sent".into());
    assert!(second.add(AgentChunk { agent_id: "ams01-a".into(), seq: 0, chunk: Some(failure) }).await);
    assert!(second.flush().await);
    for (seq, c) in tail.iter().enumerate() {
        let seq = (seq + head.len()) as u32;
        assert!(first.add(AgentChunk { agent_id: "ams01-a".into(), seq, chunk: Some(c.clone()) }).await);
    }
    assert!(first.flush().await);
    let answers = answers.await.unwrap();
    let answer = answers[0].as_ref().unwrap();
    assert_eq!(answer.packets.len(), 3000);
    assert!(answer.packets.iter().enumerate().all(|(i, p)| p.ts_ns == i as u64));
    cancel.cancel();
    runner.await.unwrap();
}
