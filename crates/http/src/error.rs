//! How an error reads on one line.
//!
//! Our errors name what failed in their message and carry why as their source, so printing only
//! the outermost one (`{e}`) drops the cause: print [`chain`] (or anyhow's `{:#}`) instead.

use std::error::Error;

/// An error and its causes, `: `-separated, as anyhow's `{:#}` prints them.
pub fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}
