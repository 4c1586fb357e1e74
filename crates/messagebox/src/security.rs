//! Database roles (security): three login roles per MessageBox —
//! `<prefix>_migrator` owns the schema and runs `mbx init` (DDL), `<prefix>_host` has DML
//! on the MessageBox tables only (what `mbx-host` needs), `<prefix>_reader` reads (for
//! `mbx status`, `stats`, `list` and monitoring), `<prefix>_forwarder` may only call the
//! `mbx_forward_*` functions (what another group's forwarding hosts need: publish into
//! this group's receive ports, nothing read or changed otherwise) — and nothing for PUBLIC. Passwords or
//! certificates are the operator's (`ALTER ROLE … PASSWORD`, pg_hba.conf); none is stored.

use crate::{Error, MessageBox, Result};

/// The names of the three roles.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoleNames {
    pub migrator: String,
    pub host: String,
    pub reader: String,
    pub forwarder: String,
}

impl RoleNames {
    /// `<prefix>_migrator`, `<prefix>_host`, `<prefix>_reader`; the prefix is a plain
    /// lower-case SQL identifier (letters, digits, `_`; at most 40 bytes).
    pub fn with_prefix(prefix: &str) -> Result<Self> {
        let valid = !prefix.is_empty()
            && prefix.len() <= 40
            && prefix.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(Error::Invalid(format!(
                "--prefix: '{prefix}' is not a lower-case identifier of at most 40 bytes (letters, digits, _) (example: --prefix mbx)"
            )));
        }
        Ok(Self {
            migrator: format!("{prefix}_migrator"),
            host: format!("{prefix}_host"),
            reader: format!("{prefix}_reader"),
            forwarder: format!("{prefix}_forwarder"),
        })
    }
}

impl MessageBox {
    /// Creates the roles if missing and (re)applies their privileges on this MessageBox, in
    /// one transaction: the migrator becomes the owner of every table and function of the
    /// schema, the host gets DML on the tables, the reader SELECT, PUBLIC loses CONNECT on
    /// the database and everything on schema `public`. Idempotent: run it again after
    /// `mbx init` applied new migrations as another role.
    pub async fn roles_apply(&self, names: &RoleNames) -> Result<()> {
        let (m, h, r, f) = (
            &names.migrator,
            &names.host,
            &names.reader,
            &names.forwarder,
        );
        let mut tx = self.pool.begin().await?;
        for role in [m, h, r, f] {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                    .bind(role)
                    .fetch_one(&mut *tx)
                    .await?;
            if !exists {
                sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let db: String = sqlx::query_scalar("SELECT quote_ident(current_database())")
            .fetch_one(&mut *tx)
            .await?;
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'",
        )
        .fetch_all(&mut *tx)
        .await?;
        let functions: Vec<String> = sqlx::query_scalar(
            "SELECT quote_ident(p.proname) || '(' || pg_get_function_identity_arguments(p.oid) || ')'
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'public'",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut statements = vec![
            format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC"),
            "REVOKE ALL ON SCHEMA public FROM PUBLIC".to_owned(),
            format!("GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {m}, {h}, {r}"),
            format!("GRANT CONNECT ON DATABASE {db} TO {f}"),
            format!("GRANT USAGE, CREATE ON SCHEMA public TO {m}"),
            format!("GRANT USAGE ON SCHEMA public TO {h}, {r}, {f}"),
        ];
        for t in &tables {
            statements.push(format!("ALTER TABLE {t} OWNER TO {m}"));
        }
        for function in &functions {
            statements.push(format!("ALTER FUNCTION {function} OWNER TO {m}"));
            if function.starts_with("mbx_forward_") {
                // the forwarder's only door; the host may forward in too
                statements.push(format!("GRANT EXECUTE ON FUNCTION {function} TO {f}, {h}"));
            }
        }
        statements.extend([
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {h}"),
            format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {h}"),
            format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r}"),
            // what the migrator creates later gets the same grants
            format!("ALTER DEFAULT PRIVILEGES FOR ROLE {m} IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {h}"),
            format!("ALTER DEFAULT PRIVILEGES FOR ROLE {m} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {h}"),
            format!("ALTER DEFAULT PRIVILEGES FOR ROLE {m} IN SCHEMA public GRANT SELECT ON TABLES TO {r}"),
        ]);
        for sql in statements {
            sqlx::query(&sql).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_plain_identifiers() {
        assert_eq!(
            RoleNames::with_prefix("mbx").unwrap().host,
            "mbx_host".to_owned()
        );
        for bad in ["", "Mbx", "mbx-1", "1mbx", "mbx;drop", &"x".repeat(41)] {
            assert!(RoleNames::with_prefix(bad).is_err(), "{bad}");
        }
    }
}
