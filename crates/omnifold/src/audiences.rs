//! `omnifold audiences ...`: audiences over gRPC (docs/audiences.md): list,
//! get and the members of one (`AudienceService`, scope profile:read);
//! create, update and delete (`AdminService`, scope admin).

use anyhow::Result;
use clap::{Args, Subcommand};

use omnifold_proto::v1 as proto;

use crate::client::connect;
use crate::tools::{admin, print_json, refused};

#[derive(Subcommand)]
pub enum AudienceCommand {
    /// Every audience: name, status, size, source and version.
    List,
    /// One audience: its definition, status and size.
    Get { name: String },
    /// Its member ids, one per line, every page of one snapshot.
    Members {
        name: String,
        /// Members per request (1 to 1000).
        #[arg(long, default_value_t = 1000)]
        page_size: i32,
    },
    /// Define an audience through the log (scope admin).
    Create {
        name: String,
        #[command(flatten)]
        def: Definition,
    },
    /// Change an audience defined through the API (scope admin).
    Update {
        name: String,
        #[command(flatten)]
        def: Definition,
        /// The version it was read at (0: whatever it is).
        #[arg(long, default_value_t = 0)]
        version: u64,
    },
    /// Delete an audience defined through the API (scope admin).
    Delete {
        name: String,
        #[arg(long, default_value_t = 0)]
        version: u64,
    },
}

/// What an audience is, as `create` and `update` take it.
#[derive(Args)]
pub struct Definition {
    #[arg(long)]
    rule: String,
    /// A consent purpose its members must have granted.
    #[arg(long, default_value = "")]
    purpose: String,
    #[arg(long, default_value = "")]
    description: String,
}

/// Runs `cmd` against `server`; `json`: proto JSON instead of a table.
pub async fn run(server: String, json: bool, cmd: AudienceCommand) -> Result<()> {
    let reads = || async {
        Ok::<_, anyhow::Error>(proto::audience_service_client::AudienceServiceClient::new(connect(&server).await?))
    };
    let show = |a: &proto::Audience| {
        if json {
            return print_json(a);
        }
        println!("{}", line(a));
        Ok(())
    };
    match cmd {
        AudienceCommand::List => {
            let all = reads().await?.list_audiences(proto::ListAudiencesRequest {}).await.map_err(refused)?;
            let all = all.into_inner();
            if json {
                return print_json(&all);
            }
            for a in &all.audiences {
                println!("{}", line(a));
            }
            Ok(())
        }
        AudienceCommand::Get { name } => {
            let a = reads().await?.get_audience(proto::GetAudienceRequest { name }).await.map_err(refused)?;
            show(&a.into_inner())
        }
        AudienceCommand::Members { name, page_size } => members(&mut reads().await?, name, page_size).await,
        AudienceCommand::Create { name, def: Definition { rule, purpose, description } } => {
            let req = proto::CreateAudienceRequest { name, rule, purpose, description };
            show(&admin(&server).await?.create_audience(req).await.map_err(refused)?.into_inner())
        }
        AudienceCommand::Update { name, def: Definition { rule, purpose, description }, version } => {
            let req = proto::UpdateAudienceRequest { name, rule, purpose, description, version };
            show(&admin(&server).await?.update_audience(req).await.map_err(refused)?.into_inner())
        }
        AudienceCommand::Delete { name, version } => {
            let req = proto::DeleteAudienceRequest { name, version };
            let r = admin(&server).await?.delete_audience(req).await.map_err(refused)?.into_inner();
            if json {
                return print_json(&r);
            }
            println!("deleted {} at version {}", r.name, r.version);
            Ok(())
        }
    }
}

/// Every page of one listing, one member id per line.
async fn members(
    c: &mut proto::audience_service_client::AudienceServiceClient<crate::client::Connection>,
    name: String,
    page_size: i32,
) -> Result<()> {
    let mut page_token = String::new();
    loop {
        let req = proto::ListAudienceMembersRequest { name: name.clone(), page_size, page_token };
        let page = c.list_audience_members(req).await.map_err(refused)?.into_inner();
        for id in &page.member_ids {
            println!("{id}");
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}

/// `NAME  STATUS  SIZE  SOURCE vVERSION  RULE`.
fn line(a: &proto::Audience) -> String {
    let status = proto::AudienceStatus::try_from(a.status).map_or("?", |s| s.as_str_name());
    let status = match status {
        "BUILDING" => format!("BUILDING ({} evaluated)", a.members_evaluated),
        s => s.to_owned(),
    };
    let source = proto::AudienceSource::try_from(a.source).map_or("?", |s| s.as_str_name());
    format!("{:<24} {:<26} {:>9} {:<13} v{:<3} {}", a.name, status, a.size, source, a.version, a.rule)
}
