//! `segctl`: the command line of segmentd.

mod commands;
mod load;
mod output;
mod progress;
mod synth;
mod values;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use output::OutputArgs;

// Bulk loads allocate a buffer per row on one thread and free it on another.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Code generated from segmentd's `proto/segmentd/v1`.
/// Field numbers shared with the server's hand-written decoders, checked there against the
/// compiled descriptors.
#[allow(dead_code)]
#[path = "../../../src/codec/tags.rs"]
mod tags;

pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("segmentd.v1");
}

#[derive(Parser)]
#[command(
    name = "segctl",
    version,
    about = "Command line for segmentd: bulk loads, segments, membership checks and exports",
    after_help = "Examples:\n  segctl gen --customers 100000 --out ./demo\n  segctl load customers ./demo/customers.csv\n  segctl segment create good --rule 'total_spent > 1000 and registered'\n  segctl check C000000042 good men-over-40\n  SEGMENTD_ADDR=http://10.0.0.5:50051 segctl stats\n\nExit codes: 0 done (or the reader of its output closed the pipe), 1 error, 2 usage error, 3 partly applied (bad rows skipped, a load stopped part way) or not found."
)]
struct Cli {
    /// segmentd's gRPC address.
    #[arg(
        long,
        global = true,
        env = "SEGMENTD_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// Bearer token for a server with roles (`--tokens-file`); prefer the variable, as a flag
    /// value shows in process lists.
    #[arg(long, global = true, env = "SEGMENTD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate to verify a TLS server with (TLS is used when given).
    #[arg(long, global = true, env = "SEGMENTD_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate and key, for a server that verifies clients (mutual TLS).
    #[arg(long, global = true, env = "SEGMENTD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, global = true, env = "SEGMENTD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --server).
    #[arg(long, global = true, env = "SEGMENTD_TLS_DOMAIN")]
    tls_domain: Option<String>,
    /// Seconds to wait for segmentd to accept the connection, and during a call for it to
    /// answer a keep-alive ping; segctl then gives up with an error. A long call (a big
    /// snapshot, a load) goes on as long as the server answers.
    #[arg(long, global = true, env = "SEGMENTD_TIMEOUT", default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..))]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

/// A connection to segmentd that sends the bearer token, if any, with every call.
pub type Ch = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Load customers, orders or segment members from a file.
    #[command(subcommand)]
    Load(LoadCommand),
    /// Define, inspect and export segments.
    #[command(subcommand)]
    Segment(SegmentCommand),
    /// Define and inspect families: member segments that partition the customers (RFM included).
    #[command(subcommand)]
    Family(FamilyCommand),
    /// Score RFM now and move customers between the RFM family's members.
    #[command(
        after_help = "Prints how many customers were scored and the score thresholds.\n\nExamples:\n  segctl reclassify\n  segctl reclassify --as-of 2026-01-01"
    )]
    Reclassify {
        /// "Now" for recency (RFC 3339 or YYYY-MM-DD); the server's clock by default.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Check one customer against segments (yes/no per segment; exit code 0 either way).
    #[command(after_help = "Example:\n  segctl check C000000042 good men-over-40 golfers")]
    Check {
        customer_id: String,
        #[arg(required = true)]
        segments: Vec<String>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Read or erase one customer.
    #[command(subcommand)]
    Customer(CustomerCommand),
    /// Add customers to or remove them from a segment, as a marketing activity.
    #[command(subcommand)]
    Activity(ActivityCommand),
    /// Follow segment entries and exits as they happen, one line each.
    #[command(
        after_help = "Lines are: sequence, time, segment, customer, entered|exited, cause (and activity).\n\
Resume after an interruption with --from and the last sequence printed: no duplicates, no gaps.\n\n\
Examples:\n  segctl watch\n  segctl watch --segment golfers --segment vip --from 1200\n  segctl watch --format jsonl --limit 1000 > events.jsonl"
    )]
    Watch {
        /// Start after this sequence (0: everything the server retains).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Only these segments (repeatable; all when absent).
        #[arg(long = "segment")]
        segments: Vec<String>,
        /// Stop after this many events (default: follow until interrupted).
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long, value_enum, default_value_t = EventFormat::Text)]
        format: EventFormat,
    },
    /// A customer's entries into and exits from segments, oldest first.
    #[command(
        after_help = "Examples:\n  segctl history C000000042\n  segctl history C000000042 --segment golfers"
    )]
    History {
        customer_id: String,
        /// Only this segment.
        #[arg(long)]
        segment: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Write a snapshot of the server's state now.
    #[command(after_help = "Example:\n  segctl snapshot")]
    Snapshot,
    /// Customers, segments and memory use.
    #[command(after_help = "Examples:\n  segctl stats\n  segctl stats -o json")]
    Stats {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// The attributes customers have (the names load files and rules use), or define one.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Shell completions for segctl, to source or install.
    #[command(
        after_help = "Examples:\n  segctl completions bash > /etc/bash_completion.d/segctl\n  segctl completions zsh > \"${fpath[1]}/_segctl\"\n  segctl completions fish > ~/.config/fish/completions/segctl.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// segctl's manual page (roff), for `man`.
    #[command(after_help = "Example:\n  segctl man > /usr/local/share/man/man1/segctl.1")]
    Man,
    /// What is running: version, commit, uptime, data directory, role, state.
    #[command(after_help = "Example:\n  segctl info")]
    Info {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Exit 0 if the server reports SERVING through the gRPC health service, 1 otherwise (for
    /// container and load-balancer health checks; needs no token).
    #[command(after_help = "Examples:\n  segctl health\n  segctl health --service segmentd.v1.Membership")]
    Health {
        /// A service to ask about (default: the server as a whole).
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Fill a server with a synthetic retail base to try it (the console, say): customers and
    /// their orders (as `gen` writes them), a few segments, and the RFM family.
    #[command(
        after_help = "Segments already defined are left as they are. Example:\n  segctl demo --customers 20000"
    )]
    Demo {
        /// Number of customers.
        #[arg(long, default_value_t = 20_000)]
        customers: u64,
        /// Same seed, same customers.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Write a deterministic synthetic retail base: customers.csv and orders.csv.
    #[command(after_help = "Example:\n  segctl gen --customers 100000 --seed 7 --out ./demo")]
    Gen {
        /// Number of customers.
        #[arg(long, default_value_t = 100_000)]
        customers: u64,
        /// Same seed, same files.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum LoadCommand {
    /// Customers from CSV (a header row of customer_id, email and attribute names) or JSONL.
    #[command(
        after_help = "CSV cells are typed by Admin.GetSchema: bool true/false/yes/no/1/0, money in major units \
(12.50), dates YYYY-MM-DD, timestamps RFC 3339 or YYYY-MM-DD, keywords sets separated by '|'. \
An empty cell leaves the attribute as it is.\n\nExamples:\n  segctl load customers customers.csv\n  segctl load customers crm.jsonl --batch-size 2000 --max-errors 100\n  segctl load customers customers.csv --dry-run"
    )]
    Customers(LoadArgs),
    /// Orders from CSV (order_id, customer_id, placed_at, amount or amount_minor, promotion,
    /// categories, brands) or JSONL with the same keys.
    #[command(after_help = "Example:\n  segctl load orders orders.csv")]
    Orders(LoadArgs),
    /// Segment members (one e-mail or customer id per line, or the first CSV column).
    #[command(after_help = "Example:\n  segctl load members golfers golf-club.csv --by email --mode include")]
    Members {
        segment: String,
        #[command(flatten)]
        args: LoadArgs,
        /// What the file lists.
        #[arg(long, value_enum, default_value_t = MemberKey::Id)]
        by: MemberKey,
        /// Put them on the include or on the exclude list.
        #[arg(long, value_enum, default_value_t = MemberMode::Include)]
        mode: MemberMode,
    },
}

#[derive(Args, Clone)]
pub struct LoadArgs {
    /// The file: `.csv`, or `.jsonl`/`.ndjson` (one JSON object a line); `-` reads CSV from stdin.
    file: PathBuf,
    /// Rows per message.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Skip up to this many bad rows, each reported with its file line, and apply the others:
    /// rows segctl refuses (a cell of the wrong type) and, for customers, rows the server
    /// refuses (an e-mail another customer holds), each side counting its own. 0: the first
    /// bad row stops the load (for customers, its batch of rows is not applied).
    #[arg(long, default_value_t = 0)]
    max_errors: usize,
    /// Check every row and apply nothing. For customers the server checks them too
    /// (`validate_only`): each row it would refuse is reported, and what the others would do
    /// counted. Orders and members are checked by segctl only.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MemberKey {
    Email,
    Id,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MemberMode {
    Include,
    Exclude,
}

#[derive(Subcommand)]
enum SegmentCommand {
    /// Create a segment from a rule in the text form (or no rule: a list-only segment).
    #[command(
        after_help = "Examples:\n  segctl segment create good --rule 'total_spent > 1000' --name 'Good customers'\n  segctl segment create men-over-40 --rule 'gender = \"M\" and age > 40'\n  segctl segment create golfers --name Golfers --allow-activities"
    )]
    Create(SegmentArgs),
    /// Change the fields given, keeping the others.
    #[command(after_help = "Example:\n  segctl segment update good --rule 'total_spent > 2000'")]
    Update(SegmentArgs),
    /// Show a segment.
    #[command(after_help = "Example:\n  segctl segment get good")]
    Get {
        segment: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// List segments with their sizes.
    #[command(after_help = "Examples:\n  segctl segment list\n  segctl segment list -o csv > segments.csv")]
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Delete a segment.
    #[command(after_help = "Example:\n  segctl segment delete good")]
    Delete { segment: String },
    /// Count the customers a rule matches, without creating a segment.
    #[command(after_help = "Example:\n  segctl segment preview 'age between 18 and 25' --sample 5")]
    Preview {
        rule: String,
        /// Matching customer ids to show.
        #[arg(long, default_value_t = 0)]
        sample: u32,
        /// Evaluate relative time as of this RFC 3339 instant.
        #[arg(long)]
        as_of: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Why a customer is or is not a member.
    #[command(after_help = "Example:\n  segctl segment explain C000000042 good")]
    Explain {
        customer_id: String,
        segment: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Customers shared by each pair of segments.
    #[command(after_help = "Example:\n  segctl segment overlap good men-over-40 golfers")]
    Overlap {
        #[arg(required = true)]
        segments: Vec<String>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Write a segment's members (id, e-mail and chosen attributes).
    #[command(
        after_help = "Examples:\n  segctl segment export good --fields city,total_spent --out good.csv\n  segctl segment export golfers --format jsonl"
    )]
    Export {
        segment: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
        /// Attributes to add after customer_id and email, comma-separated.
        #[arg(long, value_delimiter = ',')]
        fields: Vec<String>,
        /// File to write; stdout when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct SegmentArgs {
    segment: String,
    /// The rule in the text form.
    #[arg(long)]
    rule: Option<String>,
    /// Display name (on create, the segment id when absent).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// Customer ids always in (comma-separated).
    #[arg(long, value_delimiter = ',')]
    include: Option<Vec<String>>,
    /// Customer ids never in (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude: Option<Vec<String>>,
    /// Let marketing activities add and remove customers.
    #[arg(long)]
    allow_activities: Option<Option<bool>>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Subcommand)]
enum CustomerCommand {
    /// Show a customer by id (or by e-mail with --email).
    #[command(
        after_help = "Examples:\n  segctl customer get C000000042\n  segctl customer get ann@example.com --email"
    )]
    Get {
        key: String,
        #[arg(long)]
        email: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Erase a customer from every column, index and segment.
    #[command(after_help = "Example:\n  segctl customer delete C000000042")]
    Delete {
        key: String,
        #[arg(long)]
        email: bool,
    },
}

#[derive(Subcommand)]
pub enum SchemaCommand {
    /// Every attribute: name, type, built in or custom, read-only, description.
    #[command(after_help = "Examples:\n  segctl schema list\n  segctl schema list -o json")]
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Declare a custom attribute (a new column), usable in loads and rules at once.
    #[command(after_help = "Example:\n  segctl schema define shoe_size int --description 'EU size'")]
    Define {
        /// Lower-case letters, digits and '_', starting with a letter.
        name: String,
        /// bool, int, float, money, date, timestamp, keyword, keywords or text.
        #[arg(value_parser = ["bool", "int", "float", "money", "date", "timestamp", "keyword", "keywords", "text"])]
        r#type: String,
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Subcommand)]
pub enum FamilyCommand {
    /// Every family with its members, their rules and sizes.
    #[command(after_help = "Example:\n  segctl family list")]
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Define a family: members in order (first match wins), then the catch-all.
    #[command(
        after_help = "Example:\n  segctl family create value --name 'Value tiers' \\\n    --member 'value.big=total_spent >= 1000' --member 'value.mid=total_spent >= 100' \\\n    --catch-all value.small"
    )]
    Create {
        family_id: String,
        /// Display name (the id by default).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// A member as SEGMENT_ID=RULE, in order (repeatable).
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// The segment id of the catch-all member.
        #[arg(long)]
        catch_all: String,
    },
    /// Delete a family and its member segments.
    #[command(after_help = "Example:\n  segctl family delete value")]
    Delete { family_id: String },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventFormat {
    /// Tab-separated lines.
    Text,
    /// One JSON object a line.
    Jsonl,
}

#[derive(Subcommand)]
enum ActivityCommand {
    /// Put customers on a segment's include list.
    #[command(
        after_help = "Example:\n  segctl activity add golfers --activity golf-week C000000042 C000000043"
    )]
    Add(ActivityArgs),
    /// Put customers on a segment's exclude list.
    #[command(
        after_help = "Example:\n  segctl activity remove golfers --activity unsubscribe --email ann@example.com"
    )]
    Remove(ActivityArgs),
}

#[derive(Args)]
pub struct ActivityArgs {
    segment: String,
    /// The activity making the change.
    #[arg(long)]
    activity: String,
    /// Customer ids (or e-mails with --email).
    #[arg(required = true)]
    customers: Vec<String>,
    #[arg(long)]
    email: bool,
}

/// segctl's command line as parsed. The connection flags are global (accepted before or after
/// any subcommand) but listed once, in `segctl --help`, not again in each subcommand's help.
/// (Completions and the man page take [`Cli`]'s command as it is: they complete and document
/// the flags everywhere.)
fn command() -> clap::Command {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let globals: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.clone().hide(true))
        .collect();
    // Each subcommand gets the flags hidden before clap copies them in visible (it copies only
    // those a subcommand lacks); done before the command is built, whose index of flags a later
    // change would leave stale.
    fn hide(cmd: &mut clap::Command, globals: &[clap::Arg]) {
        for sub in cmd.get_subcommands_mut() {
            *sub = std::mem::take(sub).args(globals.iter().cloned());
            hide(sub, globals);
        }
    }
    hide(&mut cmd, &globals);
    cmd
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (mimalloc.h), unnamed by the bindings.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // A closed pipe (`segctl segment export good | head`) ends segctl quietly (exit 0) instead
    // of a panic on the next write. Not by restoring SIGPIPE's default: a write to a connection
    // the server closed would then kill segctl instead of returning an error it can report.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
    // Freed memory kept ten seconds rather than one (unless MIMALLOC_PURGE_DELAY says): a load
    // frees each batch it encodes, and with the default the next one faulted its pages in and
    // had them zeroed again (a tenth of the reader's time).
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mimalloc's option setter is not thread-safe; no other thread exists yet.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    }
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("segctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.exit == 0 => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("segctl: {e}");
            ExitCode::from(e.exit)
        }
    }
}
