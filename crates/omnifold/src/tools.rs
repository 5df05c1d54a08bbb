//! Small tools for humans: `profile get` (a gRPC client) and `topics create`.

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use omnifold_ingest::TopicOutcome;

use omnifold_proto::v1 as proto;
use omnifold_proto::wkt::FieldMask;

use crate::config::Config;

#[derive(Subcommand)]
pub enum ProfileCommand {
    /// Print one member's profile as JSON.
    Get {
        /// Member id (or anonymous id).
        member: String,
        /// gRPC address of a running `omnifold serve`.
        #[arg(long, default_value = "http://127.0.0.1:50051", env = "OMNIFOLD_SERVER")]
        server: String,
        /// Only these top-level fields, comma separated (e.g. purchases,channels).
        #[arg(long, value_delimiter = ',')]
        fields: Vec<String>,
    },
}

pub async fn profile(cmd: ProfileCommand) -> Result<()> {
    match cmd {
        ProfileCommand::Get { member, server, fields } => {
            let mut client = proto::profile_service_client::ProfileServiceClient::connect(server.clone())
                .await
                .with_context(|| format!("connecting to {server}; is `omnifold serve` running?"))?;
            let req = proto::GetProfileRequest {
                member: Some(proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId(member)) }),
                read_mask: Some(FieldMask { paths: fields }),
                as_of: None,
            };
            match client.get_profile(req).await {
                Ok(resp) => {
                    println!("{}", serde_json::to_string_pretty(&resp.into_inner())?);
                    Ok(())
                }
                Err(status) => bail!("{:?}: {}", status.code(), status.message()),
            }
        }
    }
}

#[derive(Subcommand)]
pub enum TopicsCommand {
    /// Create the events and dead-letter topics (existing ones are left alone).
    Create {
        /// Partitions of the events topic; fixes how members spread over instances.
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
}

pub async fn topics(config: &Config, cmd: TopicsCommand) -> Result<()> {
    match cmd {
        TopicsCommand::Create { partitions, replication } => {
            for outcome in omnifold_ingest::create_topics(&config.kafka, partitions, replication)
                .await
                .context("creating topics")?
            {
                match outcome {
                    TopicOutcome::Created(name) => println!("created topic {name}"),
                    TopicOutcome::AlreadyExists(name) => println!("topic {name} already exists"),
                }
            }
            Ok(())
        }
    }
}
