//! What can go wrong in the fleet, and how an error reads on one line.

use crate::lifetime::LockError;
use crate::store::StoreError;

/// A fleet-level failure.
///
/// Its message does not repeat its source's, nor do the errors it wraps: print the chain (anyhow's
/// `{:#}`; the API answers with it), which reads as one line with each part once.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A listener or directory of the fleet's (`what` names it).
    #[error("{what}")]
    Io {
        /// What could not be opened or created.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The state store could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A node's gateway could not start on its listeners.
    #[error("node {node}: gateway")]
    Gateway {
        /// The node's name.
        node: String,
        /// Why.
        source: std::io::Error,
    },
    /// Another fleet holds the state directory.
    #[error(transparent)]
    Locked(#[from] LockError),
    /// Input the fleet refuses (the message names file, document, field and rule).
    #[error("{0}")]
    Invalid(String),
    /// Unknown object.
    #[error("{0}")]
    NotFound(String),
}

/// An error and its causes, `: `-separated, as anyhow's `{:#}` prints them.
pub(crate) use ikukantai_http::error::chain as error_chain;

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_wrapped_error_reads_once_in_the_chain() {
        let e = FleetError::Io {
            what: "node a: gateway on 127.0.1.1:8080".into(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        assert_eq!(error_chain(&e), "node a: gateway on 127.0.1.1:8080: address in use");
        let e = FleetError::from(StoreError {
            path: PathBuf::from("/s/services/default.hello.json"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
        assert_eq!(error_chain(&e), "state store /s/services/default.hello.json: permission denied");
        let e = FleetError::from(LockError::Io {
            dir: PathBuf::from("/s"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
        assert_eq!(error_chain(&e), "state directory /s: lock file: permission denied");
        assert_eq!(
            error_chain(&FleetError::NotFound("service default/x not found".into())),
            "service default/x not found"
        );
    }
}
