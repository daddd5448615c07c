//! Bag messages back in log-time order while the bag streams. A recorder writes messages as
//! its callbacks get to them, so storage order can lag log time by a callback's delay; a
//! window of log time is held and sorted, not the whole bag.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::BagMessage;

/// A held message, ordered by log time, then by storage order.
struct Held {
    log_time_ns: i64,
    stored: u64,
    message: BagMessage,
}

impl Held {
    fn key(&self) -> (i64, u64) {
        (self.log_time_ns, self.stored)
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// Messages in, messages out in log-time order once they are `window_ns` older than the newest.
pub struct LogTimeOrder {
    window_ns: i64,
    held: BinaryHeap<Reverse<Held>>,
    stored: u64,
    newest_ns: i64,
    /// The log time of the last message let out.
    released_ns: i64,
    /// Messages stored after one with a later log time.
    pub reordered: u64,
}

impl LogTimeOrder {
    pub fn new(window_ns: i64) -> Self {
        Self {
            window_ns,
            held: BinaryHeap::new(),
            stored: 0,
            newest_ns: i64::MIN,
            released_ns: i64::MIN,
            reordered: 0,
        }
    }

    /// Hold `message`; give it back if a later message was already let out (it is stored
    /// more than the window out of order, and replaying it would turn the clock back).
    pub fn push(&mut self, message: BagMessage) -> Result<(), BagMessage> {
        let t = message.log_time_ns;
        if t < self.newest_ns {
            self.reordered += 1;
        }
        if t < self.released_ns {
            return Err(message);
        }
        self.newest_ns = self.newest_ns.max(t);
        self.stored += 1;
        self.held.push(Reverse(Held {
            log_time_ns: t,
            stored: self.stored,
            message,
        }));
        Ok(())
    }

    /// The oldest held message if it is a window older than the newest, or if `all`.
    pub fn pop(&mut self, all: bool) -> Option<BagMessage> {
        let oldest = self.held.peek()?.0.log_time_ns;
        if !all && oldest > self.newest_ns.saturating_sub(self.window_ns) {
            return None;
        }
        let Reverse(held) = self.held.pop()?;
        self.released_ns = held.log_time_ns;
        Some(held.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, log_time_ns: i64) -> BagMessage {
        BagMessage {
            topic: topic.into(),
            log_time_ns,
            data: Vec::new(),
        }
    }

    fn drain(order: &mut LogTimeOrder, all: bool) -> Vec<(String, i64)> {
        std::iter::from_fn(|| order.pop(all))
            .map(|m| (m.topic, m.log_time_ns))
            .collect()
    }

    #[test]
    fn messages_come_out_in_log_time_order_once_a_window_older_than_the_newest() {
        let mut order = LogTimeOrder::new(10);
        for (topic, t) in [("a", 0), ("b", 5), ("c", 3), ("d", 5), ("e", 12)] {
            order.push(message(topic, t)).unwrap();
        }
        assert_eq!(
            drain(&mut order, false),
            [("a".into(), 0)],
            "only 0 is 10 older than 12"
        );
        order.push(message("f", 16)).unwrap();
        // Equal log times keep their storage order.
        assert_eq!(
            drain(&mut order, false),
            [("c".into(), 3), ("b".into(), 5), ("d".into(), 5)]
        );
        assert_eq!(drain(&mut order, true), [("e".into(), 12), ("f".into(), 16)]);
        assert_eq!(order.reordered, 1, "c was stored after b");
    }

    #[test]
    fn a_message_older_than_one_let_out_is_given_back() {
        let mut order = LogTimeOrder::new(10);
        order.push(message("a", 0)).unwrap();
        order.push(message("b", 20)).unwrap();
        assert_eq!(drain(&mut order, false), [("a".into(), 0)]);
        // 5 is within the window of the newest (20) but a message at 0 has been replayed:
        // still in order, so held.
        order.push(message("c", 5)).unwrap();
        order.push(message("d", 30)).unwrap();
        assert_eq!(drain(&mut order, false), [("c".into(), 5), ("b".into(), 20)]);
        let late = order.push(message("e", 19)).unwrap_err();
        assert_eq!((late.topic.as_str(), late.log_time_ns), ("e", 19));
        assert_eq!(order.reordered, 2);
        assert_eq!(drain(&mut order, true), [("d".into(), 30)]);
    }
}
