//! The whole schema. Each crate keeps the migrations of the tables it owns (ADR 0018):
//! the event store's in `eventstore/migrations`, the read models' in
//! `projections/migrations`, the process manager's in `commands/migrations`. They are
//! applied as one sequence, in version order, so a migration may build on any earlier
//! one whichever crate holds it.

use sqlx::Acquire;
use sqlx::migrate::{Migrate, MigrateError, Migrator};

/// The process manager's migrations.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Every crate's migrations, in version order.
pub fn migrator() -> Migrator {
    let mut migrations: Vec<_> = [
        &chronicle_eventstore::db::MIGRATOR,
        &chronicle_projections::MIGRATOR,
        &MIGRATOR,
    ]
    .into_iter()
    .flat_map(|migrator| migrator.migrations.iter().cloned())
    .collect();
    migrations.sort_by_key(|migration| migration.version);
    Migrator {
        migrations: migrations.into(),
        ..Migrator::DEFAULT
    }
}

/// Applies every pending migration through `target` (a pool or a connection). Safe to
/// run from several processes at once (sqlx serialises migrators with an advisory lock,
/// so `target` must not have a short `lock_timeout`).
pub async fn migrate<'a, A>(target: A) -> Result<(), MigrateError>
where
    A: Acquire<'a>,
    <A::Connection as std::ops::Deref>::Target: Migrate,
{
    migrator().run(target).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_unique_across_crates() {
        let migrator = migrator();
        let mut versions: Vec<i64> = migrator.migrations.iter().map(|m| m.version).collect();
        let count = versions.len();
        versions.dedup();
        assert_eq!(versions.len(), count, "two crates hold one version");
    }
}
