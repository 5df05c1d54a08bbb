//! The audit topic: records appended by the server for every admin and
//! loyalty-write call, signed like omnifold's internal records, and read
//! back whole by `omnifold audit`.

use std::time::Duration;

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::consumer::client_config;
use crate::dlq::read_topic;
use crate::sign::{SIGNATURE_HEADER, Signer};
use crate::{Error, IngestConfig, Result};

/// Appends signed records to `kafka.audit_topic`.
pub struct AuditProducer {
    producer: FutureProducer<crate::status::Quiet>,
    topic: String,
    signer: Signer,
    timeout: Duration,
}

impl std::fmt::Debug for AuditProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditProducer").field("topic", &self.topic).finish()
    }
}

impl AuditProducer {
    pub fn new(cfg: &IngestConfig, signer: Signer, timeout: Duration) -> Result<AuditProducer> {
        // Not idempotent: a record written twice after a retry is harmless in
        // an audit trail, and an idempotent producer that loses its producer
        // state across a broker restart fails every later send.
        let producer = client_config(cfg)
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
            .create_with_context(crate::status::Quiet)?;
        Ok(AuditProducer { producer, topic: cfg.audit_topic.clone(), signer, timeout })
    }

    /// Sends one record and waits for the broker's acknowledgement.
    pub async fn append(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let signature = self.signer.sign(Some(key), None, value);
        let headers = OwnedHeaders::new().insert(Header { key: SIGNATURE_HEADER, value: Some(signature.as_str()) });
        let record = FutureRecord::to(&self.topic).key(key).payload(value).headers(headers);
        self.producer.send(record, self.timeout).await.map(|_| ()).map_err(|(e, _)| Error::Kafka(e))
    }
}

/// One record of the audit topic as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAudit {
    pub partition: i32,
    pub offset: i64,
    pub value: Vec<u8>,
    /// Signed by omnifold under a configured secret: written by an
    /// instance, not by another producer of the topic.
    pub signed: bool,
}

/// Every audit record, by partition and offset.
pub fn read_audit(cfg: &IngestConfig, signer: &Signer, idle: Duration) -> Result<Vec<StoredAudit>> {
    read_topic(cfg, &cfg.audit_topic, "audit-reader", idle, |m| {
        let value = m.payload().unwrap_or_default().to_vec();
        let signature = m.headers().and_then(|h| h.iter().find(|h| h.key == SIGNATURE_HEADER)).and_then(|h| h.value);
        let signed = signer.verify(m.key(), None, &value, signature);
        Ok(StoredAudit { partition: m.partition(), offset: m.offset(), value, signed })
    })
}
