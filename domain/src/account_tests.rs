use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use proptest::prelude::*;

use super::*;
use crate::actor::{Actor, Role};

type AccountTest = TestFramework<Account>;

const ID: Uuid = Uuid::from_u128(0xacc0);

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap()
}

fn alice() -> Actor {
    Actor::new("alice", [Role::Client])
}

fn by_alice(command: AccountCommand) -> Issued<AccountCommand> {
    Issued::new(alice(), at(), command)
}

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

fn movement(amount: i64, reference: Option<&str>) -> Movement {
    Movement {
        amount: Amount::new("amount", amount).unwrap(),
        currency: None,
        reference: reference.map(|r| Reference::parse(r).unwrap()),
    }
}

fn opened(overdraft_limit: i64) -> AccountEvent {
    AccountEvent::AccountOpened {
        account_id: ID,
        owner: "alice".into(),
        currency: eur(),
        overdraft_limit,
        opened_at: at(),
    }
}

fn deposited(amount: i64, balance_after: i64, reference: Option<&str>) -> AccountEvent {
    AccountEvent::FundsDeposited {
        amount,
        reference: reference.map(str::to_owned),
        balance_after,
        occurred_at: at(),
    }
}

fn withdrawn(amount: i64, balance_after: i64, reference: Option<&str>) -> AccountEvent {
    AccountEvent::FundsWithdrawn {
        amount,
        reference: reference.map(str::to_owned),
        balance_after,
        occurred_at: at(),
    }
}

fn open(overdraft_limit: i64) -> AccountCommand {
    AccountCommand::OpenAccount {
        account_id: ID,
        owner: Owner::parse("alice").unwrap(),
        currency: eur(),
        overdraft_limit,
    }
}

#[test]
fn opening_an_account_records_its_terms() {
    AccountTest::with(())
        .given_no_previous_events()
        .when(by_alice(open(500)))
        .then_expect_events(vec![opened(500)]);
}

#[test]
fn an_account_cannot_be_opened_twice() {
    AccountTest::with(())
        .given(vec![opened(0)])
        .when(by_alice(open(0)))
        .then_expect_error(DomainError::AlreadyExists);
}

#[test]
fn a_negative_overdraft_limit_is_invalid() {
    let result = AccountTest::with(())
        .given_no_previous_events()
        .when(by_alice(open(-1)))
        .inspect_result();
    assert_eq!(result.unwrap_err().code(), "validation_failed");
}

#[test]
fn a_client_cannot_open_an_account_for_someone_else() {
    let command = AccountCommand::OpenAccount {
        account_id: ID,
        owner: Owner::parse("bob").unwrap(),
        currency: eur(),
        overdraft_limit: 0,
    };
    AccountTest::with(())
        .given_no_previous_events()
        .when(by_alice(command))
        .then_expect_error(DomainError::NotFound);
}

#[test]
fn deposits_raise_the_balance() {
    AccountTest::with(())
        .given(vec![opened(0), deposited(100, 100, None)])
        .when(by_alice(AccountCommand::DepositFunds(movement(250, None))))
        .then_expect_events(vec![deposited(250, 350, None)]);
}

#[test]
fn nothing_happens_to_an_account_that_was_never_opened() {
    AccountTest::with(())
        .given_no_previous_events()
        .when(by_alice(AccountCommand::DepositFunds(movement(1, None))))
        .then_expect_error(DomainError::NotFound);
}

#[test]
fn someone_elses_account_is_not_found() {
    let bob = Issued::new(
        Actor::new("bob", [Role::Client]),
        at(),
        AccountCommand::WithdrawFunds(movement(1, None)),
    );
    AccountTest::with(())
        .given(vec![opened(0), deposited(10, 10, None)])
        .when(bob)
        .then_expect_error(DomainError::NotFound);
}

#[test]
fn an_admin_may_act_on_any_account() {
    let admin = Issued::new(
        Actor::new("root", [Role::Admin]),
        at(),
        AccountCommand::DepositFunds(movement(5, None)),
    );
    AccountTest::with(())
        .given(vec![opened(0)])
        .when(admin)
        .then_expect_events(vec![deposited(5, 5, None)]);
}

#[test]
fn withdrawals_may_use_the_overdraft_down_to_its_limit() {
    AccountTest::with(())
        .given(vec![opened(100), deposited(50, 50, None)])
        .when(by_alice(AccountCommand::WithdrawFunds(movement(150, None))))
        .then_expect_events(vec![withdrawn(150, -100, None)]);
}

#[test]
fn withdrawals_never_go_below_the_floor() {
    AccountTest::with(())
        .given(vec![opened(100), deposited(50, 50, None)])
        .when(by_alice(AccountCommand::WithdrawFunds(movement(151, None))))
        .then_expect_error(DomainError::InsufficientFunds {
            balance: 50,
            overdraft_limit: 100,
            requested: 151,
        });
}

#[test]
fn a_movement_in_another_currency_is_refused() {
    let mut usd = movement(10, None);
    usd.currency = Some(Currency::parse("USD").unwrap());
    AccountTest::with(())
        .given(vec![opened(0)])
        .when(by_alice(AccountCommand::DepositFunds(usd)))
        .then_expect_error(DomainError::CurrencyMismatch {
            expected: eur(),
            actual: Currency::parse("USD").unwrap(),
        });
}

#[test]
fn a_repeated_reference_is_a_no_op() {
    AccountTest::with(())
        .given(vec![opened(0), deposited(100, 100, Some("pay-1"))])
        .when(by_alice(AccountCommand::DepositFunds(movement(
            100,
            Some("pay-1"),
        ))))
        .then_expect_events(vec![]);
    AccountTest::with(())
        .given(vec![
            opened(0),
            deposited(100, 100, None),
            withdrawn(60, 40, Some("pay-2")),
        ])
        .when(by_alice(AccountCommand::WithdrawFunds(movement(
            60,
            Some("pay-2"),
        ))))
        .then_expect_events(vec![]);
}

#[test]
fn a_new_reference_is_applied() {
    AccountTest::with(())
        .given(vec![opened(0), deposited(100, 100, Some("pay-1"))])
        .when(by_alice(AccountCommand::WithdrawFunds(movement(
            30,
            Some("pay-2"),
        ))))
        .then_expect_events(vec![withdrawn(30, 70, Some("pay-2"))]);
}

#[test]
fn closing_needs_a_zero_balance() {
    AccountTest::with(())
        .given(vec![opened(0), deposited(100, 100, None)])
        .when(by_alice(AccountCommand::CloseAccount))
        .then_expect_error(DomainError::BalanceNotZero { balance: 100 });
    AccountTest::with(())
        .given(vec![opened(0)])
        .when(by_alice(AccountCommand::CloseAccount))
        .then_expect_events(vec![AccountEvent::AccountClosed { closed_at: at() }]);
}

#[test]
fn nothing_happens_after_close() {
    let closed = AccountEvent::AccountClosed { closed_at: at() };
    for command in [
        AccountCommand::DepositFunds(movement(1, None)),
        AccountCommand::WithdrawFunds(movement(1, None)),
        AccountCommand::CloseAccount,
    ] {
        AccountTest::with(())
            .given(vec![opened(0), closed.clone()])
            .when(by_alice(command))
            .then_expect_error(DomainError::AccountClosed);
    }
}

#[test]
fn a_stale_expected_version_is_a_conflict() {
    AccountTest::with(())
        .given(vec![opened(0), deposited(1, 1, None)])
        .when(by_alice(AccountCommand::DepositFunds(movement(1, None))).expecting(Some(1)))
        .then_expect_error(DomainError::VersionConflict {
            expected: 1,
            actual: 2,
        });
    AccountTest::with(())
        .given(vec![opened(0), deposited(1, 1, None)])
        .when(by_alice(AccountCommand::DepositFunds(movement(1, None))).expecting(Some(2)))
        .then_expect_events(vec![deposited(1, 2, None)]);
}

#[test]
fn a_balance_that_would_overflow_is_refused() {
    AccountTest::with(())
        .given(vec![opened(0), deposited(1, i64::MAX - 1, None)])
        .when(by_alice(AccountCommand::DepositFunds(movement(2, None))))
        .then_expect_error(DomainError::AmountOutOfRange);
}

/// A random movement: (is a deposit, amount, reference index or none).
fn movements() -> impl Strategy<Value = Vec<(bool, i64, Option<u8>)>> {
    prop::collection::vec(
        (any::<bool>(), 1..10_000i64, prop::option::of(0..8u8)),
        0..60,
    )
}

/// Runs commands against an account the way the framework does, returning the account
/// and every event it produced.
fn run(overdraft_limit: i64, steps: &[(bool, i64, Option<u8>)]) -> (Account, Vec<AccountEvent>) {
    let mut account = Account::default();
    let mut history = Vec::new();
    let mut commands = vec![open(overdraft_limit)];
    commands.extend(steps.iter().map(|(deposit, amount, reference)| {
        let reference = reference.map(|r| format!("ref-{r}"));
        let m = movement(*amount, reference.as_deref());
        if *deposit {
            AccountCommand::DepositFunds(m)
        } else {
            AccountCommand::WithdrawFunds(m)
        }
    }));
    for command in commands {
        if let Ok(events) = account.decide(&by_alice(command)) {
            for event in events {
                account.apply(event.clone());
                history.push(event);
            }
        }
    }
    (account, history)
}

proptest! {
    #[test]
    fn the_balance_never_goes_below_the_floor(limit in 0..5_000i64, steps in movements()) {
        let (account, history) = run(limit, &steps);
        for event in &history {
            if let AccountEvent::FundsDeposited { balance_after, .. }
            | AccountEvent::FundsWithdrawn { balance_after, .. } = event
            {
                prop_assert!(*balance_after >= -limit);
            }
        }
        prop_assert!(account.state().unwrap().balance >= -limit);
    }

    #[test]
    fn the_balance_is_the_sum_of_applied_movements(steps in movements()) {
        let (account, history) = run(1_000, &steps);
        let sum: i64 = history.iter().map(|event| match event {
            AccountEvent::FundsDeposited { amount, .. } => *amount,
            AccountEvent::FundsWithdrawn { amount, .. } => -amount,
            _ => 0,
        }).sum();
        prop_assert_eq!(account.state().unwrap().balance, sum);
    }

    #[test]
    fn each_reference_moves_money_at_most_once(steps in movements()) {
        let (_, history) = run(1_000_000, &steps);
        let mut seen = BTreeSet::new();
        for event in &history {
            if let AccountEvent::FundsDeposited { reference: Some(r), .. }
            | AccountEvent::FundsWithdrawn { reference: Some(r), .. } = event
            {
                prop_assert!(seen.insert(r.clone()), "reference {} applied twice", r);
            }
        }
    }

    #[test]
    fn replaying_the_events_yields_the_same_state(limit in 0..5_000i64, steps in movements()) {
        let (account, history) = run(limit, &steps);
        let mut replayed = Account::default();
        for event in history.clone() {
            replayed.apply(event);
        }
        prop_assert_eq!(&replayed, &account);
        // And through the stored form: events survive serialization unchanged.
        let stored = serde_json::to_value(&history).unwrap();
        let restored: Vec<AccountEvent> = serde_json::from_value(stored).unwrap();
        prop_assert_eq!(restored, history);
    }
}

#[test]
fn only_an_open_account_in_the_same_currency_is_chargeable() {
    let mut state = AccountState {
        account_id: Uuid::nil(),
        owner: "alice".into(),
        currency: Currency::parse("EUR").unwrap(),
        overdraft_limit: 0,
        balance: 0,
        closed: false,
        references: Default::default(),
    };
    let eur = Currency::parse("EUR").unwrap();
    let usd = Currency::parse("USD").unwrap();
    assert_eq!(state.chargeable_in(eur), Ok(()));
    assert_eq!(
        state.chargeable_in(usd),
        Err(DomainError::CurrencyMismatch {
            expected: eur,
            actual: usd
        })
    );
    state.closed = true;
    assert_eq!(state.chargeable_in(eur), Err(DomainError::AccountClosed));
}
