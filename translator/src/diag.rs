//! Diagnostics: what the translator noticed about user objects and did not
//! fail on. Each names the object it is about; debug endpoints show them.

use crate::model::ObjectRef;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    /// A client and a server disagree: requests will fail.
    Conflict,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub object: ObjectRef,
    /// The field the diagnostic is about, e.g. `spec.portLevelMtls.8000`.
    pub field: Option<String>,
    /// One sentence.
    pub message: String,
}

impl Diagnostic {
    pub fn warning(object: ObjectRef, field: Option<String>, message: String) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            object,
            field,
            message,
        }
    }

    pub fn conflict(object: ObjectRef, field: Option<String>, message: String) -> Self {
        Diagnostic {
            severity: Severity::Conflict,
            object,
            field,
            message,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Conflict => "CONFLICT",
        };
        write!(f, "{sev}: {}", self.object)?;
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}
