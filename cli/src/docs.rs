//! `edgecap completions SHELL` (clap_complete) and `edgecap man [--dir DIR]` (clap_mangen):
//! both made from the same clap definitions the parser uses, so they never disagree with it.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use clap::Command;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell, mut cmd: Command) {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "edgecap", &mut out);
    crate::output::emit(&String::from_utf8_lossy(&out));
}

/// The top page to stdout, or with `dir` one page per command (`edgecap.1`,
/// `edgecap-capture.1`, `edgecap-capture-create.1`, ...) into it.
pub fn man(dir: Option<&Path>, cmd: Command) -> anyhow::Result<()> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let Some(dir) = dir else {
        let mut page = Vec::new();
        render(&cmd, &mut page).context("render the man page")?;
        crate::output::emit(&String::from_utf8_lossy(&page));
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut written = 0;
    write_pages(&cmd, dir, &mut written)?;
    eprintln!("{written} man pages written to {}", dir.display());
    Ok(())
}

fn write_pages(cmd: &Command, dir: &Path, written: &mut usize) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    let name = clap_mangen::Man::new(cmd.clone()).get_filename();
    let path = dir.join(&name);
    let mut page = Vec::new();
    render(cmd, &mut page).with_context(|| format!("render {name}"))?;
    std::fs::write(&path, page).with_context(|| format!("write {}", path.display()))?;
    *written += 1;
    Ok(())
}

/// One page: clap_mangen's sections, then the command's after-help (examples, exit codes) as
/// sections of their own, kept as written (no filling).
fn render(cmd: &Command, w: &mut Vec<u8>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(w)?;
    }
    if let Some(after) = cmd.get_after_help() {
        w.write_all(after_help_roff(&after.to_string()).as_bytes())?;
    }
    if cmd.get_version().is_some() {
        man.render_version_section(w)?;
    }
    Ok(())
}

/// `Examples:` and `Exit codes:` headings become `.SH EXAMPLES` and `.SH "EXIT CODES"`; the
/// lines under them are kept as they are.
pub fn after_help_roff(text: &str) -> String {
    let mut out = String::new();
    let mut open = false;
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            if open {
                out.push_str(".fi\n");
            }
            out.push_str(&format!(".SH \"{}\"\n.nf\n", line.trim_end_matches(':').to_uppercase()));
            open = true;
            continue;
        }
        if !open {
            out.push_str(".SH NOTES\n.nf\n");
            open = true;
        }
        let escaped = line.replace('\\', "\\e").replace('-', "\\-");
        if escaped.starts_with(['.', '\'']) {
            out.push_str("\\&");
        }
        out.push_str(&escaped);
        out.push('\n');
    }
    if open {
        out.push_str(".fi\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn examples_become_a_section_kept_as_written() {
        let roff = super::after_help_roff(
            "Examples:\n  edgecap capture list --output json\n  .hidden \\\nExit codes:\n  0  ok",
        );
        assert_eq!(
            roff,
            ".SH \"EXAMPLES\"\n.nf\n  edgecap capture list \\-\\-output json\n  .hidden \\e\n.fi\n.SH \"EXIT CODES\"\n.nf\n  0  ok\n.fi\n"
        );
    }
}
