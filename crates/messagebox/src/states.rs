//! The closed vocabularies the MessageBox stores as text (each CHECK-constrained in the
//! schema), as enums: what crosses a crate boundary is one of these, never a string.
//! `text_enum!` gives each its spelling, `Display`/`FromStr` (an unknown word lists the
//! known ones), serde, and sqlx encoding as `text`.

/// Declares an enum stored and shown as text.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| {
                        let known: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                        format!("unknown {} '{s}': use {}", $what, $crate::states::one_of(&known))
                    })
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <String as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Ok(text.parse::<$name>()?)
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }
    };
}

pub(crate) use text_enum;

/// `a, b or c`.
pub(crate) fn one_of(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

text_enum! {
    /// A send port's state.
    PortState ("port state") {
        /// Not subscribed: receives nothing.
        Unenlisted = "unenlisted",
        /// Subscribed, collecting its messages, not delivering.
        Stopped = "stopped",
        /// Subscribed and delivering.
        Started = "started",
        /// An ordered port with `--stop-on-failure` held on a failed head.
        Suspended = "suspended",
    }
}

text_enum! {
    /// A send port group's state.
    GroupState ("group state") {
        Unenlisted = "unenlisted",
        Stopped = "stopped",
        Started = "started",
    }
}

text_enum! {
    /// A host instance's state.
    InstanceState ("instance state") {
        /// Heartbeating.
        Alive = "alive",
        /// Heartbeat too old, or declared dead by another instance.
        Dead = "dead",
        /// Stopped gracefully.
        Stopped = "stopped",
    }
}

text_enum! {
    /// An orchestration's state: whether it takes new activations.
    OrchestrationState ("orchestration state") {
        Enabled = "enabled",
        Disabled = "disabled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_unknown_words_list_the_known_ones() {
        for s in PortState::ALL {
            assert_eq!(s.as_str().parse::<PortState>().unwrap(), *s);
        }
        assert_eq!(PortState::Started, "started");
        let err = "paused".parse::<InstanceState>().unwrap_err();
        assert_eq!(
            err,
            "unknown instance state 'paused': use alive, dead or stopped"
        );
        assert_eq!(
            serde_json::to_string(&GroupState::Unenlisted).unwrap(),
            "\"unenlisted\""
        );
    }
}
