//! `palyra inject`: a template with every `{{ palyra://SCOPE/KEY }}` replaced by the secret's
//! value, written atomically to a 0600 file (or to stdout). Every reference is resolved before
//! anything is written; on any failure nothing is.

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::Args;
use zeroize::Zeroizing;

use super::client::connect;
use super::output::{CliError, Context, Exit};
use super::resolve::resolve;
use crate::fsutil;
use crate::vault::reference::{MAX_TEMPLATE_LEN, placeholders};

#[derive(Debug, Args)]
#[command(after_help = "Example: palyra inject -i app.env.tmpl -o app.env   \
# the template holds lines like DB_PASSWORD={{ palyra://agents/alpha/DB_PASSWORD }}")]
pub(super) struct InjectArgs {
    /// The template (default: standard input); at most 1 MiB of UTF-8 text.
    #[arg(short = 'i', long = "in", value_name = "TEMPLATE")]
    input: Option<PathBuf>,
    /// Write the result here, atomically, mode 0600 (default: standard output).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    output: Option<PathBuf>,
}

pub(super) async fn run(ctx: &Context, args: InjectArgs) -> Result<(), CliError> {
    let template = read_template(&args)?;
    let found = placeholders(&template).map_err(|e| CliError::of(Exit::Usage, format!("template: {e}")))?;

    let mut rendered = Zeroizing::new(Vec::with_capacity(template.len()));
    if !found.is_empty() {
        let channel = connect(ctx).await?;
        let values = resolve(channel, found.iter().map(|p| &p.reference))
            .await
            .map_err(|(reference, e)| e.context(reference))?;
        let mut at = 0;
        for placeholder in &found {
            rendered.extend_from_slice(&template.as_bytes()[at..placeholder.span.start]);
            // Every placeholder's reference was resolved above; a miss would be a bug here.
            let value = values
                .get(&placeholder.reference)
                .ok_or_else(|| CliError::new(format!("{} was not resolved", placeholder.reference)))?;
            rendered.extend_from_slice(&value.value);
            at = placeholder.span.end;
        }
        rendered.extend_from_slice(&template.as_bytes()[at..]);
    } else {
        rendered.extend_from_slice(template.as_bytes());
    }

    match &args.output {
        Some(path) => fsutil::write_0600_atomic(path, &rendered).map_err(|e| CliError::new(e.to_string())),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&rendered)
                .and_then(|()| out.flush())
                .map_err(|e| CliError::new(format!("cannot write to stdout: {e}")))
        }
    }
}

fn read_template(args: &InjectArgs) -> Result<Zeroizing<String>, CliError> {
    let mut bytes = Zeroizing::new(Vec::new());
    let limit = MAX_TEMPLATE_LEN as u64 + 1;
    let (read, name) = match &args.input {
        Some(path) => (
            std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut bytes)),
            path.display().to_string(),
        ),
        None => (std::io::stdin().lock().take(limit).read_to_end(&mut bytes), "stdin".to_owned()),
    };
    read.map_err(|e| CliError::new(format!("cannot read the template {name}: {e}")))?;
    if bytes.len() > MAX_TEMPLATE_LEN {
        return Err(CliError::of(
            Exit::Usage,
            format!("the template {name} is larger than {MAX_TEMPLATE_LEN} bytes"),
        ));
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_owned())),
        Err(e) => Err(CliError::of(Exit::Usage, format!("the template {name} is not UTF-8 text: {e}"))),
    }
}
