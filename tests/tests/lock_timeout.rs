//! A lock held elsewhere (a long transaction, a migration, a manual `LOCK TABLE`) makes
//! a command fail after the pool's lock timeout with `Unavailable` (503 at the edge),
//! with and without group commit, instead of waiting behind the lock; nothing of it
//! remains, and the next command after the lock goes succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chronicle_commands::{CommandError, CommandMetadata, CommandService, CommandSettings};
use chronicle_domain::account::Movement;
use chronicle_domain::values::Owner;
use chronicle_domain::{AccountCommand, Actor, Amount, Currency, Issued, Role};
use chronicle_eventstore::DatabaseSettings;
use chronicle_eventstore::repository::GroupCommitSettings;
use chronicle_tests::TestDb;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

const LOCK_TIMEOUT: Duration = Duration::from_millis(300);

fn issued(command: AccountCommand) -> Issued<AccountCommand> {
    Issued::new(
        Actor::new("alice", [Role::Client]),
        chrono::Utc::now(),
        command,
    )
}

fn deposit() -> Issued<AccountCommand> {
    issued(AccountCommand::DepositFunds(Movement {
        amount: Amount::new("amount", 10).unwrap(),
        currency: None,
        reference: None,
    }))
}

async fn service(db: &TestDb, writers: usize) -> CommandService {
    let mut database = DatabaseSettings::new(db.url());
    database.lock_timeout = LOCK_TIMEOUT;
    let pool = chronicle_eventstore::connect(&database).await.unwrap();
    CommandService::new(
        pool,
        CommandSettings {
            group_commit: GroupCommitSettings {
                writers,
                ..GroupCommitSettings::default()
            },
            ..CommandSettings::default()
        },
    )
}

#[tokio::test]
async fn a_command_behind_a_held_lock_is_unavailable_after_the_lock_timeout() {
    let db = TestDb::create().await;
    let pool = db.pool(2).await;
    let metadata = || CommandMetadata::for_request("alice", Uuid::new_v4(), None);
    // EXCLUSIVE holds back appends; ACCESS EXCLUSIVE the loads too.
    for (writers, mode) in [(2, "EXCLUSIVE"), (0, "EXCLUSIVE"), (2, "ACCESS EXCLUSIVE")] {
        let service = service(&db, writers).await;
        let account = Uuid::new_v4();
        let open = AccountCommand::OpenAccount {
            account_id: account,
            owner: Owner::parse("alice").unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            overdraft_limit: 0,
        };
        service
            .account(account, issued(open), &metadata())
            .await
            .unwrap();

        let mut blocker = PgConnection::connect_with(&db.options).await.unwrap();
        sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
        sqlx::query(&format!("LOCK TABLE events IN {mode} MODE"))
            .execute(&mut blocker)
            .await
            .unwrap();
        let started = Instant::now();
        // Without a lock timeout this would wait for as long as the lock is held.
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            service.account(account, deposit(), &metadata()),
        )
        .await;
        let waited = started.elapsed();
        sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
        assert!(
            matches!(refused, Ok(Err(CommandError::Unavailable(_)))),
            "{writers} writers, {mode}: {refused:?} after {waited:?}"
        );
        assert!(
            waited >= LOCK_TIMEOUT,
            "{writers} writers, {mode}: answered after {waited:?}"
        );

        let events = || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE aggregate_id = $1")
                .bind(account.to_string())
                .fetch_one(&pool)
                .await
                .unwrap()
        };
        assert_eq!(events().await, 1, "the refused deposit left nothing");
        service
            .account(account, deposit(), &metadata())
            .await
            .unwrap();
        assert_eq!(events().await, 2);
    }
}
