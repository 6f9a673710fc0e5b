//! TokenReview: the bearer tokens a test registers, and what the API
//! server's authenticator answers for them.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use std::collections::BTreeMap;

/// A registered bearer token.
struct TokenUser {
    username: String,
    uid: String,
    audiences: Vec<String>,
}

/// The tokens the cluster issued, by token.
#[derive(Default)]
pub(super) struct Tokens(BTreeMap<String, TokenUser>);

impl Tokens {
    pub(super) fn add(&mut self, token: &str, username: &str, uid: String, audiences: Vec<String>) {
        self.0.insert(
            token.to_string(),
            TokenUser {
                username: username.to_string(),
                uid,
                audiences,
            },
        );
    }

    /// Answers a TokenReview as the real authenticator does: the token's
    /// user when the token is known and valid for one of the audiences
    /// asked for (none asked: the token's own), else not authenticated,
    /// with the reason.
    pub(super) fn review(&self, mut review: TokenReview) -> TokenReview {
        let token = review.spec.token.clone().unwrap_or_default();
        let wanted = review.spec.audiences.clone().unwrap_or_default();
        let status = match self.0.get(&token) {
            None => denied("square/go-jose: error in cryptographic primitive"),
            Some(user) => {
                let audiences: Vec<String> = if wanted.is_empty() {
                    user.audiences.clone()
                } else {
                    wanted
                        .iter()
                        .filter(|a| user.audiences.contains(a))
                        .cloned()
                        .collect()
                };
                if audiences.is_empty() {
                    denied(&format!(
                        "token audiences {:?} is invalid for the target audiences {:?}",
                        user.audiences, wanted
                    ))
                } else {
                    let mut groups = Vec::new();
                    if let Some(sa) = user.username.strip_prefix("system:serviceaccount:")
                        && let Some((ns, _)) = sa.split_once(':')
                    {
                        groups.push("system:serviceaccounts".to_string());
                        groups.push(format!("system:serviceaccounts:{ns}"));
                    }
                    groups.push("system:authenticated".to_string());
                    TokenReviewStatus {
                        authenticated: Some(true),
                        audiences: Some(audiences),
                        user: Some(UserInfo {
                            username: Some(user.username.clone()),
                            uid: Some(user.uid.clone()),
                            groups: Some(groups),
                            extra: None,
                        }),
                        error: None,
                    }
                }
            }
        };
        review.status = Some(status);
        review.metadata.creation_timestamp = None;
        review
    }
}

fn denied(reason: &str) -> TokenReviewStatus {
    TokenReviewStatus {
        authenticated: Some(false),
        error: Some(format!("[invalid bearer token, {reason}]")),
        user: Some(UserInfo::default()),
        audiences: None,
    }
}
