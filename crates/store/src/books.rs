//! A member's books (kept orders, open lots) and its dated spend under
//! their own keys in the `books` column family, beside the member record:
//! `member prefix | tag | entry id`, so an event writes only the entries it
//! changed and one member's books are one key range.

use omnifold_core::Member;
use omnifold_core::book::{Book, Entry};
use omnifold_core::loyalty::Lot;
use omnifold_core::member::OrderRecord;
use omnifold_core::member::{Counts, Lineage, decode_entry, encode_entry};
use omnifold_core::spend::Spend;
use rocksdb::{ColumnFamily, WriteBatch};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result, Store, keys};

const ORDERS: u8 = b'o';
/// Sorts before `ORDERS`, so the lots are read without the orders.
const LOTS: u8 = b'l';
/// The dated spend, one entry (`Purchases::spend`); sorts first.
const SPEND: u8 = b'd';

fn corrupt(member: &str, what: impl std::fmt::Display) -> Error {
    Error::Corrupt(omnifold_core::Error::Corrupt(format!("member {member}: {what}")))
}

/// An iterator over the `books` column family, to read the books of
/// several members with one iterator (creating one costs more than a seek).
/// It reads the snapshot the member records were read from: a commit
/// between the two reads would otherwise pair a record with books of
/// another version.
pub(crate) type Cursor<'a> = rocksdb::DBRawIteratorWithThreadMode<'a, rocksdb::DB>;

pub(crate) fn cursor<'a>(store: &'a Store, snapshot: &'a Snapshot<'a>) -> Cursor<'a> {
    snapshot.raw_iterator_cf(store.cf(crate::CF_BOOKS))
}

pub(crate) type Snapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, rocksdb::DB>;

/// Which of a member's books a read loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    All,
    /// The dated spend and the open lots, not the kept orders: balances,
    /// tiers and windows need no more.
    SpendAndLots,
}

/// A stored member record, with its books read through `cursor` (of the
/// snapshot the record was read from).
pub(crate) fn member(cursor: &mut Cursor<'_>, partition: u32, record: &[u8], which: Which) -> Result<Member> {
    let (mut member, counts) = Member::decode_stored(record)?;
    load(cursor, partition, &mut member, counts, which)?;
    Ok(member)
}

/// What a read of a member's books found.
struct Found {
    orders: Vec<OrderRecord>,
    lots: Vec<Lot>,
    spend: Option<Spend>,
}

/// Reads the books of a member whose record says it keeps `counts` entries:
/// all of them, or all but the orders (`which`), unless the record is of a
/// format whose dated spend is rebuilt from its orders.
pub(crate) fn load(
    cursor: &mut Cursor<'_>,
    partition: u32,
    member: &mut Member,
    counts: Counts,
    which: Which,
) -> Result<()> {
    let want_orders = counts.rebuild_spend || which == Which::All;
    let mut found = Found { orders: Vec::new(), lots: Vec::new(), spend: None };
    if (want_orders && counts.orders > 0) || counts.lots > 0 || counts.marks > 0 {
        let prefix = keys::member_prefix(partition, &member.key);
        // The spend, then the lots, then the orders.
        cursor.seek(&prefix);
        while let (Some(k), Some(v)) = (cursor.key(), cursor.value()) {
            let Some(tail) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            match tail.split_first() {
                Some((&ORDERS, _)) if !want_orders => break,
                Some((&ORDERS, id)) => found.orders.push(entry(&member.key, id, v)?),
                Some((&LOTS, id)) => found.lots.push(entry(&member.key, id, v)?),
                Some((&SPEND, [])) => {
                    let spend = Spend::from_marks(decode_entry(v)?).map_err(|e| corrupt(&member.key, e))?;
                    found.spend = Some(spend);
                }
                _ => return Err(corrupt(&member.key, "a book entry of an unknown kind")),
            }
            cursor.next();
        }
        cursor.status()?;
    }
    let counted_orders = if want_orders { counts.orders } else { 0 };
    let marks = found.spend.as_ref().map_or(0, Spend::len);
    for (what, counted, found) in [
        ("orders", counted_orders, found.orders.len()),
        ("lots", counts.lots, found.lots.len()),
        ("spend marks", counts.marks, marks),
    ] {
        if counted as usize != found {
            return Err(corrupt(&member.key, format!("its record counts {counted} {what}, the store holds {found}")));
        }
    }
    member.purchases.history = Book::stored(found.orders);
    member.loyalty.lots = Book::stored(found.lots);
    member.purchases.spend = found.spend.unwrap_or_default().into_stored();
    if counts.rebuild_spend {
        member.purchases.rebuild_spend();
    }
    Ok(())
}

/// One entry, which must be the one its key names.
fn entry<T: Entry + DeserializeOwned>(member: &str, id: &[u8], value: &[u8]) -> Result<T> {
    let e: T = decode_entry(value)?;
    if T::key(e.id()) != id {
        return Err(corrupt(member, format!("a book entry is stored under another id than its own {:?}", e.id())));
    }
    Ok(e)
}

/// Stages the member's books: only what changed when each continues the
/// copy the caller loaded (`loaded`, `None` when the store had no member),
/// else the whole book after deleting the stored one.
pub(crate) fn stage(
    batch: &mut WriteBatch,
    cf: &ColumnFamily,
    partition: u32,
    member: &Member,
    loaded: Option<Lineage>,
) {
    let prefix = keys::member_prefix(partition, &member.key);
    stage_book(batch, cf, &prefix, ORDERS, &member.purchases.history, loaded.map(|l| l.orders));
    stage_book(batch, cf, &prefix, LOTS, &member.loyalty.lots, loaded.map(|l| l.lots));
    stage_spend(batch, cf, &prefix, &member.purchases.spend, loaded.map(|l| l.spend));
}

/// The dated spend's one entry: written when it changed or replaced the
/// loaded copy, deleted when it became empty.
fn stage_spend(batch: &mut WriteBatch, cf: &ColumnFamily, prefix: &[u8], spend: &Spend, loaded: Option<u64>) {
    let continues = loaded.is_some_and(|l| l != 0 && l == spend.lineage());
    if continues && !spend.changed() {
        return;
    }
    let key = [prefix, &[SPEND]].concat();
    if !spend.is_empty() {
        batch.put_cf(cf, key, encode_entry(spend));
    } else if loaded.is_some() {
        batch.delete_cf(cf, key);
    }
}

fn stage_book<T: Entry + Serialize>(
    batch: &mut WriteBatch,
    cf: &ColumnFamily,
    prefix: &[u8],
    tag: u8,
    book: &Book<T>,
    loaded: Option<u64>,
) {
    let mut book_prefix = prefix.to_vec();
    book_prefix.push(tag);
    let key = |id: &T::Id| [book_prefix.as_slice(), &T::key(id)].concat();
    let entries: Box<dyn Iterator<Item = &T>> = if loaded.is_some_and(|l| l != 0 && l == book.lineage()) {
        for id in book.removed() {
            batch.delete_cf(cf, key(id));
        }
        Box::new(book.changed())
    } else {
        if loaded.is_some() {
            batch.delete_range_cf(cf, &book_prefix, &keys::prefix_end(&book_prefix));
        }
        Box::new(book.iter())
    };
    for e in entries {
        batch.put_cf(cf, key(e.id()), encode_entry(e));
    }
}
