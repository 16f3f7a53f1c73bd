//! Schema migrations: the numbered files in `migrations/`, embedded in the binary and
//! applied with sqlx's migrator (bookkeeping in `_sqlx_migrations` of the store's schema,
//! a checksum per applied file, and a database-wide advisory lock so processes starting
//! together apply them once). Never edit an applied file; add the next number.
//!
//! Built by hand rather than with `sqlx::migrate!` so the crate needs neither the sqlx
//! facade (its optional SQLite driver clashes with rusqlite's `links = "sqlite3"`) nor
//! proc macros.

use std::borrow::Cow;

use sqlx_core::migrate::{Migrate, MigrateError, Migration, MigrationType, Migrator};
use sqlx_core::sql_str::SqlSafeStr;

/// `(version, description, sql)`, in order. A test checks this lists every file.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "cluster", include_str!("../migrations/0002_cluster.sql")),
];

pub fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(v, d, sql)| Migration::new(*v, Cow::Borrowed(*d), MigrationType::Simple, sql.into_sql_str(), false))
            .collect(),
    )
}

/// Applies every pending migration on `conn` (whose `search_path` selects the schema).
pub async fn migrate<C: Migrate>(conn: &mut C) -> Result<(), MigrateError> {
    migrator().run_direct(None, conn, false).await
}
