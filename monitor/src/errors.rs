//! Error text for people: an error and the errors that caused it, on one
//! line, so that the verifier log and the OS error reach the user.

use std::error::Error;

/// The error and its sources, `: `-joined. A source whose text the line
/// already holds is left out: many errors spell their source in their own
/// message as well as returning it from `source()`.
pub fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("loading failed")]
        Quiet(#[source] io::Error),
        #[error("attaching failed: {0}")]
        Spelled(#[source] io::Error),
    }

    #[test]
    fn sources_are_joined_once() {
        let denied = || io::Error::from_raw_os_error(libc::EPERM);
        let text = denied().to_string();
        assert_eq!(chain(&Outer::Quiet(denied())), format!("loading failed: {text}"));
        assert_eq!(chain(&Outer::Spelled(denied())), format!("attaching failed: {text}"));
        assert_eq!(chain(&denied()), text);
    }
}
