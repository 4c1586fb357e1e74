//! The command line of `mbx`: clap definitions only.

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "mbx",
    version,
    about = "Administer an mbx group: hosts, ports, groups, messages, suspended items.",
    after_help = "Example:\n  export MBX_DATABASE_URL=postgres://postgres@127.0.0.1:5432/mbx\n  mbx init\n  mbx send-port create eu --address 'file:///tmp/eu/%MessageID%.xml' --filter 'Order.Region == \"EU\"'\n  mbx stats"
)]
pub struct Cli {
    /// PostgreSQL URL of the MessageBox (the group's database).
    #[arg(long, env = "MBX_DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Output format of read commands.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create or migrate the MessageBox (idempotent) and the host `default`.
    #[command(after_help = "Example:\n  mbx init --group orders")]
    Init {
        /// Name of the group this MessageBox is (recorded on first init).
        #[arg(long)]
        group: Option<String>,
    },
    /// Hosts, instances (alive/dead), ports, spool and suspended items at a glance.
    #[command(after_help = "Example:\n  mbx status --output json")]
    Status,
    /// Hosts: logical containers that receive locations and send ports are bound to.
    #[command(subcommand)]
    Host(HostCommand),
    /// Running host instances (mbx-host processes).
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Declared property types (undeclared properties are strings).
    #[command(subcommand)]
    Property(PropertyCommand),
    /// Receive ports: named entry points holding receive locations.
    #[command(subcommand, name = "receive-port")]
    ReceivePort(ReceivePortCommand),
    /// Receive locations: an adapter address + pipeline, bound to a host.
    #[command(subcommand, name = "receive-location")]
    ReceiveLocation(ReceiveLocationCommand),
    /// Send ports: subscribers that deliver messages through an adapter.
    #[command(subcommand, name = "send-port")]
    SendPort(SendPortCommand),
    /// Send port groups: a filter shared by several send ports.
    #[command(subcommand, name = "send-port-group")]
    SendPortGroup(GroupCommand),
    /// This group (MessageBox) and its links to other groups.
    #[command(subcommand)]
    Group(GroupLevelCommand),
    /// Publish and find messages.
    #[command(subcommand)]
    Message(MessageCommand),
    /// Orchestrations: durable business processes, each a Serverless Workflow document in
    /// the mbx profile (docs/orchestrations.md). Definitions are stored and versioned; the
    /// instances of their `--host` run them.
    #[command(subcommand)]
    Orchestration(OrchestrationCommand),
    /// Suspended items: messages held for an operator.
    #[command(subcommand)]
    Suspended(SuspendedCommand),
    /// Spool size and per-port backlog, retrying, in-flight and suspended counts; with
    /// --watch, refreshed in place with each port's delivery rate, until Ctrl-C.
    #[command(
        after_help = "Examples:\n  mbx stats --output json\n  mbx stats --watch --interval 2s\n\nRates come from the delivered counters each host instance writes with its heartbeat\n(every 2 s), so the first frame has none and a rate covers at least one heartbeat.\nWith --output json, --watch prints one JSON object per line."
    )]
    Stats {
        /// Refresh in place until Ctrl-C, with delivered/s per port.
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes (at least 100ms).
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "2s",
            requires = "watch"
        )]
        interval: String,
    },
    /// The web console (Group Hub): overview with live counters and charts, ordered
    /// ports, suspended items (resume/terminate after a confirmation), tracking, and the
    /// port and location actions. Serves until Ctrl-C.
    #[command(
        after_help = "Examples:\n  mbx console                                  # http://127.0.0.1:8081/\n  mbx console --listen 0.0.0.0:8081 --token env:MBX_CONSOLE_TOKEN\n  mbx console --read-only\n\nOn any address but loopback a token is required (at least 16 characters); operators\nlog in with it at /login, scripts may send `Authorization: Bearer TOKEN`. Every action\nis a POST with a CSRF value and is logged with what it changed. A console whose\ndatabase role cannot write is read-only by itself. Put a TLS proxy in front of it\noff the machine."
    )]
    Console {
        /// Address to serve on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
        listen: String,
        /// The login token: env:NAME or file:PATH (never the token itself).
        #[arg(long, value_name = "REF")]
        token: Option<String>,
        /// Offer no action (every POST is refused).
        #[arg(long)]
        read_only: bool,
    },
    /// Every tracked event of a message, in order.
    #[command(after_help = "Example:\n  mbx track 0192f7a4-0c1e-7b5e-9a2f-3d4c5b6a7980")]
    Track {
        /// The message id (mbx.MessageId).
        message_id: String,
    },
    /// Write the group's configuration (bindings) as YAML: hosts, property declarations,
    /// links, receive ports and locations, send ports and groups, orchestrations (each
    /// with its current definition). Secrets stay references.
    #[command(
        after_help = "Examples:\n  mbx export -f group.yaml\n  mbx export --application manager-b -f manager-b.yaml"
    )]
    Export {
        /// Only this application's ports, locations, groups and orchestrations (and the
        /// hosts and links they use).
        #[arg(long)]
        application: Option<String>,
        /// Write to this file instead of stdout.
        #[arg(short = 'f', long = "file")]
        file: Option<std::path::PathBuf>,
    },
    /// Make the MessageBox match a bindings file, in one transaction: prints the plan
    /// (create / update with the fields that change / delete), then applies it.
    #[command(
        after_help = "Examples:\n  mbx apply -f manager-b.yaml --dry-run\n  mbx apply -f manager-b.yaml\n  mbx apply -f group.yaml --prune"
    )]
    Apply {
        /// The bindings file (YAML, as `mbx export` writes it).
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
        /// Print the plan, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete the objects of the file's applications that the file does not
        /// have (hosts, property declarations and links are never pruned).
        #[arg(long)]
        prune: bool,
        /// With --prune: a deleted send port takes its waiting and suspended messages
        /// with it (without, such a port stops the apply, saying how many it holds).
        #[arg(long, requires = "prune")]
        discard_messages: bool,
    },
    /// Database roles: a migrator (owns the schema), a host role (DML only), a reader, a
    /// forwarder (for other groups' links).
    #[command(subcommand)]
    Roles(RolesCommand),
    /// Print the command reference (every command's --help) as Markdown: docs/cli.md.
    #[command(hide = true, after_help = "Example:\n  mbx reference > docs/cli.md")]
    Reference,
    /// Benchmark mbx end to end with its peers in the same run: creates its
    /// own databases on the server of --database-url and drops them after.
    #[command(
        disable_help_flag = true,
        after_help = "Examples:\n  mbx bench --help                # every option, with more examples\n  mbx bench                       # everything, ~10 minutes\n  mbx bench --workload unordered --duration 10s --peers pgmq,rabbitmq --json\n\nmbx bench runs mbx-bench, the benchmark's own binary next to mbx, with ARGS (and\n--json with --output json); mbx links none of the benchmark's peers. Build both with\n--release first (`cargo build --release --bins`): mbx-bench runs the mbx-host next to it."
    )]
    Bench {
        /// The benchmark's arguments, passed to mbx-bench as they are (`mbx bench --help`
        /// lists them).
        #[arg(
            value_name = "ARGS",
            num_args = 0..,
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RolesCommand {
    /// Create `<prefix>_migrator`, `<prefix>_host`, `<prefix>_reader` and
    /// `<prefix>_forwarder` (login roles without passwords) and grant them their privileges
    /// on this MessageBox; revoke PUBLIC's. The forwarder may only call the functions
    /// through which other groups' links publish into this group's receive ports.
    /// Idempotent: run it again after `mbx init` applied new migrations. Needs a superuser
    /// or the database owner with CREATEROLE.
    #[command(
        after_help = "Example:\n  mbx roles create --prefix mbx\n  psql -c \"ALTER ROLE mbx_host PASSWORD 'from-your-vault'\"\n  mbx-host --database-url postgres://mbx_host@db:5432/mbx"
    )]
    Create {
        /// Prefix of the role names.
        #[arg(long, default_value = "mbx")]
        prefix: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// Create a host.
    #[command(
        after_help = "Examples:\n  mbx host create edi --throttle-publish 20000\n  mbx host create archive --throttle-database-size off"
    )]
    Create {
        name: String,
        /// Undelivered deliveries of messages this host published before its receive
        /// locations slow down.
        #[arg(long)]
        throttle_publish: Option<i64>,
        /// In-flight messages per instance before it claims no more.
        #[arg(long)]
        throttle_inflight: Option<i64>,
        /// Size of the MessageBox database at which this host's receive locations stop
        /// taking messages (e.g. 50GB, 512MiB), off, or group (the default: the group's
        /// threshold, `mbx group set --throttle-database-size`).
        #[arg(long, value_name = "SIZE|off|group")]
        throttle_database_size: Option<String>,
        /// Tracking level of the host's ports: off, failures, all.
        #[arg(long)]
        tracking: Option<String>,
    },
    /// Change a host's throttles or tracking level in place (running instances pick them up).
    #[command(
        after_help = "Examples:\n  mbx host update edi --throttle-publish 100000 --tracking all\n  mbx host update edi --throttle-database-size 40GB\n  mbx host update edi --throttle-database-size group"
    )]
    Update {
        name: String,
        /// Undelivered deliveries of messages this host published before its receive
        /// locations slow down.
        #[arg(long)]
        throttle_publish: Option<i64>,
        /// In-flight messages per instance before it claims no more.
        #[arg(long)]
        throttle_inflight: Option<i64>,
        /// A size (50GB, 512MiB), off, or group (follow the group's threshold).
        #[arg(long, value_name = "SIZE|off|group")]
        throttle_database_size: Option<String>,
        /// off, failures or all.
        #[arg(long)]
        tracking: Option<String>,
    },
    /// List hosts.
    #[command(after_help = "Example:\n  mbx host list --output json")]
    List,
    /// Delete a host (refused while ports, locations or live instances use it).
    #[command(after_help = "Example:\n  mbx host delete edi")]
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum InstanceCommand {
    /// List host instances with their heartbeat age.
    #[command(after_help = "Example:\n  mbx instance list")]
    List,
    /// Forget stopped and dead instances that hold nothing (maintenance does it after 7
    /// days).
    #[command(after_help = "Example:\n  mbx instance prune --older-than 1h")]
    Prune {
        /// Only instances whose last heartbeat is at least this old (s, m, h, d).
        #[arg(long, default_value = "0s")]
        older_than: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PropertyCommand {
    /// Declare a property's type.
    #[command(after_help = "Example:\n  mbx property create Order.Amount --type integer")]
    Create {
        name: String,
        /// string, integer, decimal, boolean or timestamp.
        #[arg(long = "type", default_value = "string")]
        ty: String,
    },
    /// List declared properties.
    #[command(after_help = "Example:\n  mbx property list")]
    List,
    /// Delete a declaration (refused while a filter uses the property).
    #[command(after_help = "Example:\n  mbx property delete Order.Amount")]
    Delete { name: String },
}

#[derive(Args, Debug)]
pub struct SendPortCreate {
    pub name: String,
    /// Host the port runs on.
    #[arg(long, default_value = "default")]
    pub host: String,
    /// Primary transport address, e.g. file:///data/out/%MessageID%.xml.
    #[arg(long, required_unless_present = "dynamic", conflicts_with = "dynamic")]
    pub address: Option<String>,
    /// The address comes from each message's mbx.OutboundTransportLocation.
    #[arg(long)]
    pub dynamic: bool,
    /// Address prefixes a dynamic port may send to (repeatable), e.g. file:///data/out/.
    ///
    /// Compared parsed, never as text: file:///data/out/ is that folder and below (symlinks
    /// resolved when sending); https://partner.example/api/ the same scheme, host and port
    /// (443 explicit or not) and a path below /api on a segment boundary, no user;
    /// amqp://broker/%2f?exchange=orders the same broker, user and vhost with those query
    /// pairs; mailto:orders@partner.example one recipient, mailto:@partner.example its exact
    /// domain; mbx://LINK/ any receive port through that link. A prefix with a query (other
    /// than AMQP's), a fragment, '..', no host or an unknown scheme is refused (docs/adapters.md).
    #[arg(long = "allow-address", requires = "dynamic")]
    pub allow_address: Vec<String>,
    /// Subscription filter, e.g. 'Order.Region == "EU"'. Without one the port receives nothing.
    #[arg(long)]
    pub filter: Option<String>,
    /// Deliver one at a time in publication order.
    #[arg(long)]
    pub ordered: bool,
    /// Keep order per value of this promoted property (per customer, per account), keys
    /// delivered concurrently; implies --ordered. A message without it is suspended.
    #[arg(long, value_name = "PROP")]
    pub ordered_by: Option<String>,
    /// With --ordered-by: hash buckets of the keys, each under its own lease (1..1024;
    /// default 64).
    #[arg(long, value_name = "N", requires = "ordered_by")]
    pub ordered_buckets: Option<i32>,
    /// Ordered ports: hold the port (state suspended) when the head message fails; a port
    /// ordered by a property holds only that message's key.
    #[arg(long)]
    pub stop_on_failure: bool,
    /// Ordered ports: completions committed per batch.
    #[arg(long, default_value_t = 32)]
    pub ordered_commit_batch: i32,
    /// Retries on the primary transport.
    #[arg(long, default_value_t = 3)]
    pub retry_count: i32,
    /// Time between retries (s, m, h).
    #[arg(long, default_value = "5m")]
    pub retry_interval: String,
    /// fixed or exponential (doubling up to --retry-max-interval).
    #[arg(long, default_value = "fixed")]
    pub retry_backoff: String,
    /// Longest interval with exponential backoff.
    #[arg(long, default_value = "1h")]
    pub retry_max_interval: String,
    /// Backup transport address, used when the primary's retries are exhausted.
    #[arg(long)]
    pub backup_address: Option<String>,
    /// Retries on the backup transport.
    #[arg(long, default_value_t = 3)]
    pub backup_retry_count: i32,
    /// Time between backup retries.
    #[arg(long, default_value = "5m")]
    pub backup_retry_interval: String,
    /// Failed-message routing: a message suspended here is also published as an error
    /// report (promoted ErrorReport.ErrorType = "FailedMessage", ErrorReport.SendPortName,
    /// ErrorReport.FailureCode, ErrorReport.OutboundTransportLocation,
    /// ErrorReport.Description) for an error-handling port to take; one nobody takes is
    /// dropped (logged, counted), never reported again.
    #[arg(long)]
    pub route_failed: bool,
    /// Tracking level: off, failures, all (default: the host's).
    #[arg(long)]
    pub tracking: Option<String>,
    /// Solicit-response (HTTP): publish the endpoint's answer as a message, in the
    /// transaction that completes the request (context: mbx.CorrelationToken,
    /// mbx.IsSolicitResponse, mbx.SendPortName, http.StatusCode, and the request's
    /// properties named by `--set copy_properties=A.B,C.D`); it goes to a waiting two-way
    /// client and to subscribers, never back to this port. A 4xx is a failure unless
    /// `--set reply_statuses=4xx`.
    #[arg(long)]
    pub solicit_response: bool,
    /// Adapter setting KEY=VALUE (repeatable).
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Start delivering at once.
    #[arg(long, conflicts_with = "unenlisted")]
    pub start: bool,
    /// Create without a subscription (receives nothing until enlisted).
    #[arg(long)]
    pub unenlisted: bool,
    /// The application it belongs to (bindings as code: `mbx export --application A`).
    #[arg(long, default_value = "default")]
    pub application: String,
}

/// What `send-port update` and `receive-location update` share: adapter settings changed
/// key by key, and the application.
#[derive(Args, Debug, Default)]
pub struct UpdateCommon {
    /// Set an adapter setting KEY=VALUE (repeatable; others are kept).
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Remove an adapter setting (repeatable).
    #[arg(long = "unset")]
    pub unset: Vec<String>,
    /// Move it to another application.
    #[arg(long)]
    pub application: Option<String>,
}

/// `send-port update`: every create flag, each optional (absent: unchanged).
#[derive(Args, Debug, Default)]
pub struct SendPortUpdate {
    pub name: String,
    /// Move the port to this host.
    #[arg(long)]
    pub host: Option<String>,
    /// New primary address (a dynamic port becomes static).
    #[arg(long, conflicts_with = "dynamic")]
    pub address: Option<String>,
    /// Make the port dynamic (with --allow-address).
    #[arg(long)]
    pub dynamic: bool,
    /// Replace the address prefixes a dynamic port may send to (repeatable), e.g.
    /// https://partner.example/api/; compared parsed as with send-port create.
    #[arg(long = "allow-address")]
    pub allow_address: Vec<String>,
    /// New subscription filter (a routing change: later publishes see it, earlier do not).
    #[arg(long, conflicts_with = "no_filter")]
    pub filter: Option<String>,
    /// Remove the filter: the port receives nothing more.
    #[arg(long)]
    pub no_filter: bool,
    /// true or false; refused while deliveries wait.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub ordered: Option<bool>,
    /// true or false (ordered ports).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub stop_on_failure: Option<bool>,
    #[arg(long)]
    pub ordered_commit_batch: Option<i32>,
    #[arg(long)]
    pub retry_count: Option<i32>,
    #[arg(long)]
    pub retry_interval: Option<String>,
    #[arg(long)]
    pub retry_backoff: Option<String>,
    #[arg(long)]
    pub retry_max_interval: Option<String>,
    #[arg(long, conflicts_with = "no_backup_address")]
    pub backup_address: Option<String>,
    /// Remove the backup transport.
    #[arg(long)]
    pub no_backup_address: bool,
    #[arg(long)]
    pub backup_retry_count: Option<i32>,
    #[arg(long)]
    pub backup_retry_interval: Option<String>,
    /// Failed-message routing on or off (`--route-failed false`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub route_failed: Option<bool>,
    /// off, failures, all, or host (the host's level).
    #[arg(long)]
    pub tracking: Option<String>,
    /// Solicit-response on or off (`--solicit-response false`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub solicit_response: Option<bool>,
    #[command(flatten)]
    pub more: UpdateCommon,
}

#[derive(Subcommand, Debug)]
pub enum SendPortCommand {
    /// Create a send port (stopped: it collects its messages, sends after `start`).
    #[command(
        after_help = "Example:\n  mbx send-port create eu --address 'file:///tmp/eu/%MessageID%.xml' --filter 'Order.Region == \"EU\"'"
    )]
    Create(Box<SendPortCreate>),
    /// Change a port in place (one transaction, checked as at creation): its backlog, state
    /// and ordered sequence stay. Only the flags given change.
    #[command(
        after_help = "Examples:\n  mbx send-port update manager-b --address mbx://managers/from-broker\n  mbx send-port update eu --filter 'Order.Region == \"EU\" and Order.Amount > 100' --retry-count 5"
    )]
    Update(Box<SendPortUpdate>),
    /// Show a port's settings and counters.
    #[command(after_help = "Example:\n  mbx send-port show eu --output json")]
    Show { name: String },
    /// List send ports.
    #[command(after_help = "Example:\n  mbx send-port list")]
    List,
    /// Subscribe an unenlisted port (stopped: collects, does not send).
    #[command(after_help = "Example:\n  mbx send-port enlist eu")]
    Enlist { name: String },
    /// Start delivering (enlists if needed).
    #[command(after_help = "Example:\n  mbx send-port start eu")]
    Start { name: String },
    /// Stop delivering; messages keep arriving and wait.
    #[command(after_help = "Example:\n  mbx send-port stop eu")]
    Stop { name: String },
    /// Remove the subscription (refused while deliveries wait, unless --force).
    #[command(after_help = "Example:\n  mbx send-port unenlist eu --force")]
    Unenlist {
        name: String,
        /// Suspend the waiting deliveries (kind failed) first.
        #[arg(long)]
        force: bool,
    },
    /// Ordered port held after a failure (--stop-on-failure): retry the failed head and go on.
    #[command(
        after_help = "Examples:\n  mbx send-port resume ledger\n  mbx send-port resume accounts --key ACME-42   # a port ordered by a property: one held key"
    )]
    Resume {
        name: String,
        /// The held key of a port created with --ordered-by (`mbx send-port show NAME` lists them).
        #[arg(long)]
        key: Option<String>,
    },
    /// Ordered port held after a failure: suspend the failed head (failed-final) and go on.
    #[command(
        after_help = "Examples:\n  mbx send-port skip ledger\n  mbx send-port skip accounts --key ACME-42"
    )]
    Skip {
        name: String,
        /// The held key of a port created with --ordered-by.
        #[arg(long)]
        key: Option<String>,
    },
    /// Delete a port (refused while it has deliveries or suspended items).
    #[command(after_help = "Example:\n  mbx send-port delete eu")]
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum GroupLevelCommand {
    /// Show the group-wide settings and the MessageBox database's size now.
    #[command(after_help = "Example:\n  mbx group show --output json")]
    Show,
    /// Change group-wide settings. --throttle-database-size: once the MessageBox database
    /// (pg_database_size) reaches SIZE, every host's receive locations stop taking
    /// messages (FILE leaves files, AMQP stops consuming, HTTP answers 503 +
    /// Retry-After) until it is below 90% of SIZE; deliveries, replies and forwarded
    /// messages go on. A host may override it (`mbx host update NAME
    /// --throttle-database-size SIZE|off|group`). Default off.
    #[command(
        after_help = "Examples:\n  mbx group set --throttle-database-size 50GB\n  mbx group set --throttle-database-size off\n  mbx group set --tracking-retention 30d\n\nHosts read the database's size every 5 s. Leave headroom below the disk's free space for\nWAL and vacuum (docs/operations.md, \"Disk\")."
    )]
    Set {
        /// A size (50GB, 512MiB, bytes) or off.
        #[arg(long, value_name = "SIZE|off")]
        throttle_database_size: Option<String>,
        /// How long tracking events (a message's history, `mbx track`) are kept, in whole
        /// days (e.g. 7d, 30d; 1d to 3650d). Default 7d.
        #[arg(long, value_name = "DAYS")]
        tracking_retention: Option<String>,
    },
    /// Links to other groups: a send port with address mbx://LINK/RECEIVE_PORT forwards
    /// into the linked group's MessageBox, exactly once.
    #[command(subcommand)]
    Link(LinkCommand),
}

#[derive(Subcommand, Debug)]
pub enum LinkCommand {
    /// Link another group: connects to its MessageBox, checks it is an mbx MessageBox with
    /// group links and not this group, and records its group id.
    #[command(
        after_help = "Example:\n  export MANAGERS_DATABASE_URL=postgres://mbx_forwarder:secret@managers-db:5432/mbx\n  mbx group link add managers --target-url env:MANAGERS_DATABASE_URL\n  mbx send-port create manager-b --address mbx://managers/from-broker --filter 'Order.ManagerId == \"B\"'\n\n--database-url (MBX_DATABASE_URL) is this group's MessageBox; --target-url the other's,\nas a reference (env:NAME, file:PATH) or a URL without a password. On the target, `mbx\nroles create` makes <prefix>_forwarder, which can only publish into receive ports."
    )]
    Add {
        name: String,
        /// The linked group's MessageBox: env:NAME, file:PATH, or a URL without a password.
        #[arg(long)]
        target_url: String,
    },
    /// List this group's links.
    #[command(after_help = "Example:\n  mbx group link list")]
    List,
    /// Remove a link (refused while a send port forwards through it).
    #[command(after_help = "Example:\n  mbx group link remove managers")]
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create a send port group (stopped unless --start).
    #[command(
        after_help = "Example:\n  mbx send-port-group create all-eu --filter 'Order.Region == \"EU\"'"
    )]
    Create {
        name: String,
        /// Subscription filter of the group, e.g. 'Order.Region == "EU"': every member
        /// receives what it matches.
        #[arg(long)]
        filter: Option<String>,
        /// Start the group at once (deliveries reached through it are sent).
        #[arg(long, conflicts_with = "unenlisted")]
        start: bool,
        /// Create it unenlisted: its filter subscribes nothing until it is started.
        #[arg(long)]
        unenlisted: bool,
        /// The application it belongs to (bindings as code).
        #[arg(long, default_value = "default")]
        application: String,
    },
    /// Change a group's filter (a routing change: later publishes see it) or application in
    /// place.
    #[command(
        after_help = "Example:\n  mbx send-port-group update all-eu --filter 'Order.Region == \"EU\"'"
    )]
    Update {
        name: String,
        /// New subscription filter of the group.
        #[arg(long, conflicts_with = "no_filter")]
        filter: Option<String>,
        /// Remove the group's filter: it routes nothing more.
        #[arg(long)]
        no_filter: bool,
        /// Move it to another application.
        #[arg(long)]
        application: Option<String>,
    },
    /// Add ports to a group.
    #[command(after_help = "Example:\n  mbx send-port-group add all-eu eu archive")]
    Add {
        name: String,
        #[arg(required = true)]
        ports: Vec<String>,
    },
    /// Remove ports from a group.
    #[command(after_help = "Example:\n  mbx send-port-group remove all-eu archive")]
    Remove {
        name: String,
        #[arg(required = true)]
        ports: Vec<String>,
    },
    /// Start a group: deliveries reached through it can be sent.
    #[command(after_help = "Example:\n  mbx send-port-group start all-eu")]
    Start { name: String },
    /// Stop a group.
    #[command(after_help = "Example:\n  mbx send-port-group stop all-eu")]
    Stop { name: String },
    /// Enlist a group: its filter subscribes (what it routes waits until it starts).
    #[command(after_help = "Example:\n  mbx send-port-group enlist all-eu")]
    Enlist { name: String },
    /// Remove a group's subscription (refused while deliveries only it routes wait,
    /// unless --force).
    #[command(after_help = "Example:\n  mbx send-port-group unenlist all-eu --force")]
    Unenlist {
        name: String,
        /// Suspend the waiting deliveries only this group routes (kind failed) first.
        #[arg(long)]
        force: bool,
    },
    /// Delete a group (its member ports stay); refused while deliveries only it routes
    /// wait or are in flight.
    #[command(after_help = "Example:\n  mbx send-port-group delete all-eu")]
    Delete { name: String },
    /// List groups and their members.
    #[command(after_help = "Example:\n  mbx send-port-group list")]
    List,
}

#[derive(Subcommand, Debug)]
pub enum MessageCommand {
    /// Publish one message from a file or stdin.
    #[command(
        after_help = "Example:\n  mbx message publish --promote Order.Region=EU --file order.xml"
    )]
    Publish {
        /// Promote a property (routable): NAME=VALUE, typed by its declaration.
        #[arg(long = "promote")]
        promote: Vec<String>,
        /// Write a property (carried along, not routable): NAME=VALUE.
        #[arg(long = "property")]
        property: Vec<String>,
        /// Body file (default: stdin).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Content type (default: from the file extension, else application/octet-stream).
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Find messages still in the MessageBox (waiting, in flight, retrying, suspended),
    /// newest first. Delivered messages have left it: `mbx track ID` shows their events.
    #[command(
        visible_alias = "find",
        after_help = "Examples:\n  mbx message list --where 'Order.Region == \"EU\"' --newer-than 1h\n  mbx message list --port eu --state retrying --limit 20\n  mbx message list --where 'mbx.SourceFileName == \"order-42.xml\"'"
    )]
    List {
        /// A filter over the message's properties (promoted or written), in the
        /// subscription language, e.g. 'Order.Region == "EU"'.
        #[arg(long = "where")]
        filter: Option<String>,
        /// Only messages bound for, or suspended on, this send port.
        #[arg(long)]
        port: Option<String>,
        /// Only messages received through a location of this receive port.
        #[arg(long)]
        receive_port: Option<String>,
        /// Only messages in this state on some port: waiting, in-flight, retrying or
        /// suspended.
        #[arg(long)]
        state: Option<String>,
        /// Only messages published at most this long ago (s, m, h, d).
        #[arg(long)]
        newer_than: Option<String>,
        /// Messages shown at most.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

/// `orchestration create|update`: the definition file and where it runs.
#[derive(Args, Debug)]
pub struct OrchestrationDefine {
    /// The definition: a Serverless Workflow 1.0 document in YAML (or JSON); its
    /// `document.name` names the orchestration, `document.namespace` is its application.
    #[arg(short = 'f', long = "file")]
    pub file: std::path::PathBuf,
    /// Host whose instances run it.
    #[arg(long, default_value = "default")]
    pub host: String,
    /// A sequential convoy's order survives host failures: each convoy key's instances run
    /// on one host instance at a time, under a fenced lease per bucket of keys (as a port's
    /// --ordered-by). Fixed at creation: an update gives the same flags.
    #[arg(long)]
    pub ordered: bool,
    /// With --ordered: hash buckets of the convoy keys, each under its own lease (1..1024;
    /// default 64).
    #[arg(long, value_name = "N", requires = "ordered")]
    pub buckets: Option<i32>,
}

#[derive(Subcommand, Debug)]
pub enum OrchestrationCommand {
    /// Create an orchestration from its definition (enabled). The definition is checked
    /// against the DSL's schema and the mbx profile, and its activation's properties
    /// against the declarations; a refused one changes nothing.
    #[command(
        after_help = "Example:\n  mbx property create Order.Id\n  mbx orchestration create -f demo/order-manager.yaml"
    )]
    Create(OrchestrationDefine),
    /// Store a definition over an existing orchestration: a new document.version becomes
    /// current and takes new activations (instances finish on theirs); the same version
    /// with the same document changes nothing; the same version with another document is
    /// refused.
    #[command(
        after_help = "Example:\n  mbx orchestration update -f demo/order-manager.yaml --host default"
    )]
    Update(OrchestrationDefine),
    /// List orchestrations with their current version.
    #[command(after_help = "Example:\n  mbx orchestration list --output json")]
    List,
    /// Show an orchestration: its versions, its activation, and (with --output json) its
    /// current definition.
    #[command(after_help = "Example:\n  mbx orchestration show order-manager --output json")]
    Show { name: String },
    /// Take new activations.
    #[command(after_help = "Example:\n  mbx orchestration enable order-manager")]
    Enable { name: String },
    /// Take no new activations.
    #[command(after_help = "Example:\n  mbx orchestration disable order-manager")]
    Disable { name: String },
    /// Delete an orchestration and every version of it. Refused while instances of it
    /// have not ended, unless --cancel-instances.
    #[command(
        after_help = "Example:\n  mbx orchestration delete order-manager --cancel-instances"
    )]
    Delete {
        name: String,
        /// Cancel its instances that have not ended first, in the same transaction (what
        /// they were held becomes zombie suspended items).
        #[arg(long)]
        cancel_instances: bool,
    },
    /// Orchestration instances: find them, look into one, suspend, resume or cancel them.
    #[command(subcommand)]
    Instance(ProcessInstanceCommand),
}

/// Which orchestration instances (`mbx orchestration instance list|suspend|resume|cancel`).
#[derive(Args, Debug, Clone, Default)]
pub struct ProcessInstanceFilter {
    /// Only instances of this orchestration.
    #[arg(long)]
    pub orchestration: Option<String>,
    /// pending, running, waiting, suspended, faulted, cancelled or completed.
    #[arg(long)]
    pub state: Option<String>,
    /// Only instances with this correlation value (K=V, e.g. Order.Id=A-1); repeatable.
    #[arg(long, value_name = "K=V")]
    pub correlation: Vec<String>,
    /// Started at least this long ago (s, m, h, d).
    #[arg(long)]
    pub older_than: Option<String>,
    /// At most N instances (default 1000).
    #[arg(long)]
    pub limit: Option<i64>,
}

#[derive(Subcommand, Debug)]
pub enum ProcessInstanceCommand {
    /// List instances, oldest first.
    #[command(
        after_help = "Example:\n  mbx orchestration instance list --orchestration order-manager --state waiting\n  mbx orchestration instance list --correlation Order.Id=A-1 --output json"
    )]
    List {
        #[command(flatten)]
        filter: ProcessInstanceFilter,
    },
    /// Show one instance: its state, the task it stands on and what it waits for, its
    /// error, its messages and its correlations (with --output json, its saved state).
    #[command(after_help = "Example:\n  mbx orchestration instance show 0190f1c2-…")]
    Show { id: String },
    /// An instance's history, step by step: the messages that activated it or that it
    /// consumed, those it published, how each step ended (waiting, calling, completed,
    /// faulted, at which task) and an operator's suspend, resume and cancel.
    #[command(
        after_help = "Example:\n  mbx orchestration instance history 0190f1c2-… --output json"
    )]
    History { id: String },
    /// Suspend pending, running or waiting instances: nothing of them runs until resumed
    /// (messages for them are held; a step in flight commits nothing and runs again).
    #[command(
        after_help = "Example:\n  mbx orchestration instance suspend 0190f1c2-…\n  mbx orchestration instance suspend --orchestration order-manager --state waiting"
    )]
    Suspend {
        /// Instance ids (or select with --orchestration).
        ids: Vec<String>,
        #[command(flatten)]
        filter: ProcessInstanceFilter,
    },
    /// Resume suspended or faulted instances (a faulted one from its failed task),
    /// optionally on another version of their orchestration.
    #[command(
        after_help = "Example:\n  mbx orchestration instance resume 0190f1c2-…\n  mbx orchestration instance resume --orchestration order-manager --state faulted --to-version 1.0.1"
    )]
    Resume {
        /// Instance ids (or select with --orchestration).
        ids: Vec<String>,
        #[command(flatten)]
        filter: ProcessInstanceFilter,
        /// Go on on this version of the orchestration (refused for an instance whose task
        /// path that version lacks).
        #[arg(long, value_name = "V")]
        to_version: Option<String>,
    },
    /// Cancel instances that have not ended: what they were held and did not take
    /// becomes zombie suspended items.
    #[command(
        after_help = "Example:\n  mbx orchestration instance cancel 0190f1c2-…\n  mbx orchestration instance cancel --orchestration order-manager --state faulted"
    )]
    Cancel {
        /// Instance ids (or select with --orchestration).
        ids: Vec<String>,
        #[command(flatten)]
        filter: ProcessInstanceFilter,
    },
}

#[derive(Args, Debug, Clone)]
pub struct SuspendedFilter {
    /// Only items of this send port.
    #[arg(long)]
    pub port: Option<String>,
    /// routing-failure, receive-failure, failed, failed-final or zombie.
    #[arg(long)]
    pub kind: Option<String>,
    /// Reason or an attempt's error contains TEXT (case-insensitive).
    #[arg(long)]
    pub error_like: Option<String>,
    /// Suspended at least this long ago (s, m, h, d).
    #[arg(long)]
    pub older_than: Option<String>,
    /// At most N items.
    #[arg(long)]
    pub limit: Option<i64>,
}

#[derive(Subcommand, Debug)]
pub enum SuspendedCommand {
    /// List suspended items.
    #[command(
        after_help = "Example:\n  mbx suspended list --kind routing-failure --older-than 1h"
    )]
    List {
        #[command(flatten)]
        filter: SuspendedFilter,
    },
    /// Show an item: context, body size and every attempt's error.
    #[command(after_help = "Example:\n  mbx suspended show 42")]
    Show { id: String },
    /// Write an item's body to a file (or stdout).
    #[command(after_help = "Example:\n  mbx suspended save 42 --to order-42.xml")]
    Save {
        id: String,
        /// Write the body to this file instead of stdout.
        #[arg(long)]
        to: Option<std::path::PathBuf>,
    },
    /// Resume resumable items (by id or filter): failed → fresh delivery, routing failure → routed again.
    #[command(
        after_help = "Example:\n  mbx suspended resume 42\n  mbx suspended resume --port eu --kind failed"
    )]
    Resume {
        id: Option<String>,
        #[command(flatten)]
        filter: SuspendedFilter,
    },
    /// Remove items (by id or filter) and their messages when nothing else needs them.
    #[command(
        after_help = "Example:\n  mbx suspended terminate --kind routing-failure --older-than 7d"
    )]
    Terminate {
        id: Option<String>,
        #[command(flatten)]
        filter: SuspendedFilter,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReceivePortCommand {
    /// Create a receive port.
    #[command(
        after_help = "Examples:\n  mbx receive-port create orders\n  mbx receive-port create quotes --two-way"
    )]
    Create {
        name: String,
        /// Request-response: an HTTP client waits for the reply — the first message
        /// published with its request's mbx.CorrelationToken (e.g. a solicit-response
        /// port's response) — or gets 504 after its location's `--set timeout=30s`.
        #[arg(long)]
        two_way: bool,
        /// Failed-message routing: a receive failure or a routing failure of a message
        /// received here is also published as an error report (ErrorReport.ErrorType
        /// "FailedMessage" or "RoutingFailure", ErrorReport.ReceivePortName, …).
        #[arg(long)]
        route_failed: bool,
        /// The application it belongs to (bindings as code).
        #[arg(long, default_value = "default")]
        application: String,
    },
    /// Change a receive port in place: its application.
    #[command(
        after_help = "Examples:\n  mbx receive-port update from-broker --application manager-b\n  mbx receive-port update orders --route-failed"
    )]
    Update {
        name: String,
        /// Move it to another application.
        #[arg(long)]
        application: Option<String>,
        /// Failed-message routing on or off (`--route-failed false`).
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        route_failed: Option<bool>,
    },
    /// List receive ports and their locations.
    #[command(after_help = "Example:\n  mbx receive-port list")]
    List,
    /// Delete a receive port (refused while locations feed it).
    #[command(after_help = "Example:\n  mbx receive-port delete orders")]
    Delete { name: String },
}

#[derive(Args, Debug)]
pub struct ReceiveLocationCreate {
    pub name: String,
    /// The receive port this location feeds.
    #[arg(long)]
    pub port: String,
    /// Host whose instances run the location.
    #[arg(long, default_value = "default")]
    pub host: String,
    /// Adapter address, e.g. file:///data/in/*.xml or http:///orders.
    #[arg(long)]
    pub address: String,
    /// passthru, json or xml.
    #[arg(long, default_value = "passthru")]
    pub pipeline: String,
    /// Promote PROP=PATH from the body: a JSON pointer or an XML element path (repeatable).
    #[arg(long = "promote")]
    pub promote: Vec<String>,
    /// Set mbx.MessageType on every message received, e.g. Payment (json and passthru
    /// pipelines; xml takes it from the root element).
    #[arg(long)]
    pub message_type: Option<String>,
    /// Receive in order on one instance at a time (pull adapters).
    #[arg(long)]
    pub ordered: bool,
    /// Largest message accepted, e.g. 100MB, 1MiB.
    #[arg(long, default_value = "100MB")]
    pub max_message_size: String,
    /// Adapter setting KEY=VALUE (repeatable).
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// The application it belongs to (bindings as code: `mbx export --application A`).
    #[arg(long, default_value = "default")]
    pub application: String,
}

/// `receive-location update`: the create flags, each optional (absent: unchanged).
#[derive(Args, Debug, Default)]
pub struct ReceiveLocationUpdate {
    pub name: String,
    /// Feed another receive port.
    #[arg(long)]
    pub port: Option<String>,
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long)]
    pub address: Option<String>,
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Replace the promotions with these PROP=PATH (repeatable).
    #[arg(long = "promote")]
    pub promote: Vec<String>,
    /// Remove every promotion.
    #[arg(long, conflicts_with = "promote")]
    pub no_promote: bool,
    /// Set mbx.MessageType on every message received (json and passthru pipelines).
    #[arg(long)]
    pub message_type: Option<String>,
    /// Stop setting mbx.MessageType.
    #[arg(long, conflicts_with = "message_type")]
    pub no_message_type: bool,
    /// true or false; only on a disabled location.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub ordered: Option<bool>,
    #[arg(long)]
    pub max_message_size: Option<String>,
    #[command(flatten)]
    pub more: UpdateCommon,
}

#[derive(Subcommand, Debug)]
pub enum ReceiveLocationCommand {
    /// Create a receive location (disabled until `enable`).
    #[command(
        after_help = "Example:\n  mbx receive-location create orders-in --port orders --address 'file:///data/in/*.json' --pipeline json --promote Order.Region=/region"
    )]
    Create(Box<ReceiveLocationCreate>),
    /// Change a location in place (one transaction, checked as at creation); an enabled
    /// location is restarted with the new settings by its host.
    #[command(
        after_help = "Example:\n  mbx receive-location update orders-in --address 'file:///data/in2/*.json' --promote Order.Region=/region"
    )]
    Update(Box<ReceiveLocationUpdate>),
    /// Start receiving on this location.
    #[command(after_help = "Example:\n  mbx receive-location enable orders-in")]
    Enable { name: String },
    /// Stop receiving on this location.
    #[command(after_help = "Example:\n  mbx receive-location disable orders-in")]
    Disable { name: String },
    /// Delete a disabled location.
    #[command(after_help = "Example:\n  mbx receive-location delete orders-in")]
    Delete { name: String },
    /// List receive locations.
    #[command(after_help = "Example:\n  mbx receive-location list --output json")]
    List,
}

/// The command line with what only the adapters know added to the `--help` of the
/// commands that take addresses: each scheme's address form and `--set` keys, from the
/// adapters' own tables (so the help cannot drift from what `mbx` accepts).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    use mbx_adapters::{adapters_help, Side};
    let with_adapters = |c: clap::Command, side: Side| {
        let example = c
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        c.after_long_help(format!(
            "{example}\n\nAddresses (--address) and their adapter settings (--set KEY=VALUE):\n{}",
            adapters_help(side)
        ))
    };
    Cli::command()
        .mut_subcommand("send-port", |c| {
            c.mut_subcommand("create", |c| with_adapters(c, Side::Send))
                .mut_subcommand("update", |c| with_adapters(c, Side::Send))
        })
        .mut_subcommand("receive-location", |c| {
            c.mut_subcommand("create", |c| with_adapters(c, Side::Receive))
                .mut_subcommand("update", |c| with_adapters(c, Side::Receive))
        })
}

/// Width the reference is rendered at (independent of the terminal).
const REFERENCE_WIDTH: usize = 100;

/// The command reference: every command's long `--help`, in order, as Markdown.
pub fn reference() -> String {
    fn walk(cmd: &mut clap::Command, path: &str, out: &mut String) {
        // the reference does not depend on this shell's environment
        *cmd = std::mem::take(cmd).mut_args(|a| a.hide_env_values(true));
        let help = cmd.render_long_help().to_string();
        out.push_str(&format!(
            "## `{path}`\n\n```text\n{}\n```\n\n",
            help.trim_end()
        ));
        for sub in cmd.get_subcommands_mut() {
            if sub.get_name() == "help" || sub.is_hide_set() {
                continue;
            }
            let path = format!("{path} {}", sub.get_name());
            walk(sub, &path, out);
        }
    }
    let mut root = command()
        .term_width(REFERENCE_WIDTH)
        .max_term_width(REFERENCE_WIDTH);
    root.build();
    let mut out = String::from(
        "# The `mbx` command reference\n\nEvery command's `--help`, generated from the command's own definitions by\n`mbx reference > docs/cli.md`; `tests/cli.rs` fails when this file and the binary differ.\n\n",
    );
    walk(&mut root, "mbx", &mut out);
    out
}
