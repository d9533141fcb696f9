//! A hand-driven agent for tests of the coordinator's side of the control stream: it holds
//! a real agent certificate and a real mutual-TLS stream, and sends whatever the test writes,
//! in any order, including what no real agent would send.

use std::sync::Arc;
use std::time::Duration;

use edgecap_coordinator::Coordinator;
use edgecap_proto::agent::v1 as pb;
use edgecap_tls::TlsFiles;
use tokio::sync::mpsc;

/// A control stream to one coordinator, after its `Welcome`.
pub struct FakeAgent {
    tx: mpsc::Sender<pb::AgentMessage>,
    /// What the coordinator sends, for a test to read itself.
    pub inbound: tonic::Streaming<pb::CoordinatorMessage>,
}

impl FakeAgent {
    /// Connects as `agent_id` in `pop` with `files` (issued for that agent) and says hello
    /// with one interface, `sim0`.
    pub async fn connect(coord: &Coordinator, files: &TlsFiles, agent_id: &str, pop: &str) -> Self {
        let endpoint = format!("https://127.0.0.1:{}", coord.grpc_addr.port());
        let channel =
            edgecap_agent::connect(&endpoint, Arc::new(edgecap_tls::client_config(files).unwrap())).await.unwrap();
        let mut client = pb::agent_control_client::AgentControlClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        let hello = pb::Hello {
            agent_id: agent_id.into(),
            pop: pop.into(),
            interfaces: vec!["sim0".into()],
            version: "fake".into(),
            sample_rate: 1,
            lookback_snaplen: 160,
        };
        tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hello(hello)) }).await.unwrap();
        let mut inbound = client.control(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        let welcome = inbound.message().await.unwrap().unwrap();
        assert!(matches!(welcome.msg, Some(pb::coordinator_message::Msg::Welcome(_))));
        Self { tx, inbound }
    }

    /// Sends one message; false once the stream is gone.
    pub async fn send(&self, msg: pb::agent_message::Msg) -> bool {
        self.tx.send(pb::AgentMessage { msg: Some(msg) }).await.is_ok()
    }

    /// The next message the coordinator sends that `pick` takes, skipping the others
    /// (clock echoes, queries); panics after `timeout` or if the stream ends.
    pub async fn next<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(pb::coordinator_message::Msg) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, self.inbound.message())
                .await
                .expect("the coordinator did not send the message awaited")
                .expect("the control stream failed")
                .expect("the control stream ended");
            if let Some(found) = message.msg.and_then(&mut pick) {
                return found;
            }
        }
    }

    /// Reads until the coordinator ends the stream; returns its final status's message.
    pub async fn ended_with(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, self.inbound.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return "stream ended without a status".into(),
                Ok(Err(status)) => return format!("{:?}: {}", status.code(), status.message()),
                Err(_) => panic!("the coordinator did not cut the agent off"),
            }
        }
    }
}
