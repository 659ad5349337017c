//! `media-server`: the yiwang site node (SFU, WHIP/WHEP, HTTP API, QUIC endpoint) and its
//! administrative commands. The CLI is pinned: operators' scripts and automated checks call
//! exactly these flags. Logs go to stderr; stdout carries only the `ready …` line or a command's
//! output.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use media_server::config::NodeConfig;
use media_server::identity::NodeIdentity;
use media_server::signal::{RevocationFile, REVOCATION_FILE};
use signaling::auth::{Role, TokenRequest, DEFAULT_TTL_SECS};
use signaling::core::Revocation;
use signaling::ids::{IncidentId, NodeId, Subject};

#[derive(Parser, Debug)]
#[command(
    name = "media-server",
    version,
    about = "yiwang site node: WebRTC SFU with WHIP/WHEP, HTTP API and QUIC endpoint",
    long_about = "yiwang site node: WebRTC SFU with WHIP/WHEP, HTTP API and QUIC endpoint.\n\n\
        Without a subcommand, runs the node. Once every listener is bound it prints exactly one \
        line on stdout: `ready http=IP:PORT media=IP:PORT quic=IP:PORT`. Flags override the TOML \
        config file; port 0 picks a free port.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// TOML configuration file (see `--print-config` for every key and its default).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory: issuer key, node certificate, node id (created on first start).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// HTTP listen address (WHIP/WHEP, API, metrics, wall). Default 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// UDP address of the one WebRTC media socket. Default 0.0.0.0:8443.
    #[arg(long, value_name = "ADDR")]
    media: Option<SocketAddr>,
    /// UDP address of the QUIC endpoint for native clients. Default 0.0.0.0:4433.
    #[arg(long, value_name = "ADDR")]
    quic: Option<SocketAddr>,
    /// IP address put in ICE candidates (needed when --media binds 0.0.0.0 behind NAT).
    #[arg(long, value_name = "IP")]
    advertise: Option<IpAddr>,
    /// Node id (default: stored in the data dir, generated on first start). Refused if the data
    /// dir already holds another id: the tokens it issued name that one.
    #[arg(long, value_name = "ID")]
    node_id: Option<NodeId>,
    /// Print the effective configuration (file + flags) as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mint a token signed by this node's issuer key; prints only the token on stdout.
    Token(TokenArgs),
    /// Revoke every token of a subject (issued until now) or one token by id. A running node
    /// using this data directory applies it within a second and closes matching sessions.
    Revoke(RevokeArgs),
    /// The province CA that authenticates trunks between nodes.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Write this node's nats-server configuration (the province bus) from its `[trunk]` and
    /// `[nats]` sections to `<data_dir>/nats/nats.conf` (mode 0600) and print its path; with
    /// `--stdout`, print the configuration instead. Run `nats-server -c FILE` with it when
    /// `[nats] supervise = false`.
    NatsConfig(NatsConfigArgs),
}

#[derive(Args, Debug)]
struct NatsConfigArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Print the configuration on stdout (it contains the node's own password).
    #[arg(long)]
    stdout: bool,
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create the province CA (ca.pem, ca.key mode 0600, ca.name) in DIR; refuses to replace one.
    /// Prints the certificate and key paths.
    Init {
        /// CA directory (created if missing). Keep it on the CA host: ca.key signs every node.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Common name of the CA certificate.
        #[arg(long, value_name = "NAME", default_value = "yiwang province CA")]
        name: String,
    },
    /// Issue a certificate for node NODE (DNS name = NODE, TLS server and client use), written as
    /// NODE.pem and NODE.key (0600); refuses to overwrite. Prints both paths.
    Issue {
        /// The node name (as in its `[trunk] node` / node id).
        #[arg(value_name = "NODE")]
        node: String,
        /// CA directory made by `ca init`.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where to write the node's files. Default: the CA directory.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// An extra name or IP address for the certificate (repeatable): the host children's
        /// nats-servers dial as `[nats] parent_leaf` (docs/province.md). Trunks need none.
        #[arg(long = "san", value_name = "HOST")]
        san: Vec<String>,
    },
    /// Revoke a node certificate: add it to DIR/revoked.txt (by SHA-256 fingerprint). Copy that
    /// file to every node (`[trunk] revoked`): nodes reread it within a second, close trunks to
    /// the certificate's holder and refuse it from then on. Prints the list's path and the
    /// fingerprint. Issue the node a new certificate with `ca issue` (after moving the old files).
    Revoke {
        /// The node's certificate file (NODE.pem).
        #[arg(value_name = "CERT")]
        cert: PathBuf,
        /// CA directory made by `ca init`.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["sub", "jti"])))]
struct RevokeArgs {
    /// Data directory of the node.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Revoke every token issued to this subject up to this second (tokens minted in a later
    /// second stay valid).
    #[arg(long, value_name = "NAME")]
    sub: Option<Subject>,
    /// Revoke the token with this id (`jti` claim).
    #[arg(long, value_name = "ID")]
    jti: Option<String>,
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// Data directory of the node (the issuer key is created there if missing).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Subject: who the token is for (also its default stream name).
    #[arg(long, value_name = "NAME")]
    sub: Subject,
    /// Role: admin, commander, operator, officer, pilot, device or viewer.
    #[arg(long, value_name = "ROLE")]
    role: Role,
    /// Lifetime in seconds.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TTL_SECS)]
    ttl: u64,
    /// Grant an incident (repeatable).
    #[arg(long = "incident", value_name = "ID")]
    incidents: Vec<IncidentId>,
    /// Grant a drone (repeatable).
    #[arg(long = "drone", value_name = "ID")]
    drones: Vec<String>,
    /// Audience: the node id the token is for, or `*` for every node trusting this issuer.
    /// Default: this node.
    #[arg(long, value_name = "NODE")]
    aud: Option<String>,
    /// The node id, for a data dir that has none yet (as the node's own `--node-id`: mint
    /// tokens before the first start). Refused if the data dir already names another id.
    #[arg(long, value_name = "ID")]
    node_id: Option<NodeId>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::Revoke(args)) => revoke(args),
        Some(Command::Ca(cmd)) => ca(cmd),
        Some(Command::NatsConfig(args)) => nats_config(args),
        None => run(cli.run),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("media-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let identity =
        NodeIdentity::load_or_create(&args.data, args.node_id.as_ref()).context("node identity")?;
    let aud = args.aud.unwrap_or_else(|| identity.node_id.to_string());
    if aud != "*" {
        NodeId::parse(&aud).map_err(|e| anyhow::anyhow!("--aud: {e}"))?;
    }
    let mut req = TokenRequest::new(args.sub, args.role, aud, identity.fingerprint.clone());
    req.ttl_secs = args.ttl;
    if args.ttl > signaling::auth::DEFAULT_MAX_LIFETIME_SECS {
        eprintln!(
            "media-server token: warning: --ttl {} is longer than the {} s that nodes accept by \
             default ([auth] max_token_lifetime_secs): this token will be refused unless raised",
            args.ttl,
            signaling::auth::DEFAULT_MAX_LIFETIME_SECS
        );
    }
    req.incidents = args.incidents;
    req.drones = args.drones;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let token = identity.issuer().issue(&req, now);
    println!("{token}");
    Ok(())
}

fn ca(cmd: CaCommand) -> anyhow::Result<()> {
    use media_server::cascade::ca::ProvinceCa;
    match cmd {
        CaCommand::Init { dir, name } => {
            let (cert, key) = ProvinceCa::init(&dir, &name)?;
            println!("{}\n{}", cert.display(), key.display());
        }
        CaCommand::Issue {
            node,
            dir,
            out,
            san,
        } => {
            let node = trunk::NodeName::parse(&node).map_err(|e| anyhow::anyhow!("NODE: {e}"))?;
            let ca = ProvinceCa::load(&dir)?;
            let (cert, key) =
                ca.issue_to_with_names(&node, out.as_deref().unwrap_or(&dir), &san)?;
            println!("{}\n{}", cert.display(), key.display());
        }
        CaCommand::Revoke { cert, dir } => {
            if !dir.join(media_server::cascade::ca::CA_CERT).exists() {
                anyhow::bail!(
                    "{} is not a CA directory (no {})",
                    dir.display(),
                    media_server::cascade::ca::CA_CERT
                );
            }
            let pem = std::fs::read_to_string(&cert)
                .with_context(|| format!("reading {}", cert.display()))?;
            let label = cert
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (list, fpr) = ProvinceCa::revoke(&dir, &pem, &label)?;
            println!("{}\n{fpr}", list.display());
        }
    }
    Ok(())
}

fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    if !args
        .data
        .join(media_server::identity::NODE_ID_FILE)
        .exists()
    {
        anyhow::bail!(
            "{} is not a node data directory (no node.id)",
            args.data.display()
        );
    }
    let r = match (args.sub, args.jti) {
        (Some(sub), None) => Revocation::Subject {
            sub,
            at: signaling::UnixSecs(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs()),
        },
        (None, Some(jti)) if !jti.is_empty() && jti.len() <= 128 => Revocation::Token { jti },
        (None, Some(_)) => anyhow::bail!("--jti must be 1..=128 characters"),
        _ => anyhow::bail!("give exactly one of --sub or --jti"),
    };
    let path = args.data.join(REVOCATION_FILE);
    RevocationFile::append(&path, &r).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

fn nats_config(args: NatsConfigArgs) -> anyhow::Result<()> {
    let config = effective_config(&args.run)?;
    let node = config
        .trunk
        .node
        .clone()
        .or_else(|| config.node.id.clone())
        .context("nats-config needs the node's name: [trunk] node, [node] id or --node-id")?;
    let (path, plan) = media_server::natsd::write(&config, &node)?;
    if args.stdout {
        print!("{}", bus::server::render(&plan));
    } else {
        println!("{}", path.display());
    }
    Ok(())
}

fn effective_config(args: &RunArgs) -> anyhow::Result<NodeConfig> {
    let mut config = match &args.config {
        Some(path) => NodeConfig::load(path)?,
        None => NodeConfig::default(),
    };
    if let Some(d) = &args.data {
        config.node.data_dir = d.clone();
    }
    if let Some(a) = args.http {
        config.http.listen = a;
    }
    if let Some(a) = args.media {
        config.media.listen = a;
    }
    if let Some(a) = args.quic {
        config.quic.listen = a;
    }
    if let Some(ip) = args.advertise {
        config.media.advertise = Some(ip);
    }
    if let Some(id) = &args.node_id {
        config.node.id = Some(id.clone());
    }
    Ok(config)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = effective_config(&args)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    config.check_files()?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let node = media_server::node::start(config).await?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", node.ready_line())?;
            out.flush()?;
        }
        // A node whose media task, signaling or listener died cannot serve: exit non-zero so
        // that the supervisor (systemd `Restart=on-failure`, a container runtime) restarts it.
        let failure = tokio::select! {
            _ = shutdown_signal() => None,
            f = node.failed() => Some(f),
        };
        tracing::info!("shutting down");
        node.shutdown().await;
        match failure {
            None => Ok(()),
            Some(f) => Err(anyhow::anyhow!("{f}: the node cannot serve and exits")),
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
