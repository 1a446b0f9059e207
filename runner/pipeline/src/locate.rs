//! Maps a field path such as `environments.production.steps[0].gate.plugin`
//! to the line and column where it appears in the YAML text. serde's errors
//! carry a location already; this serves the checks that run after parsing.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Positions of every key and value in a YAML document, by field path.
#[derive(Debug, Default)]
pub struct Locations {
    positions: HashMap<String, (usize, usize)>,
}

impl Locations {
    /// Indexes `text`. A text that does not parse gives an empty index (the
    /// parse error is reported by serde with its own location).
    pub fn index(text: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut walker, false).is_err() {
            return Locations::default();
        }
        Locations {
            positions: walker.positions,
        }
    }

    /// The 1-based line and column of `path`, or of its nearest ancestor
    /// that appears in the text; `(1, 1)` when none does.
    pub fn of(&self, path: &str) -> (usize, usize) {
        let mut path = path;
        loop {
            if let Some(position) = self.positions.get(path) {
                return *position;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => return (1, 1),
            }
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    positions: HashMap<String, (usize, usize)>,
}

impl Walker {
    /// The path of the node that starts now.
    fn node_path(&self) -> String {
        match self.stack.last() {
            Some(Frame::Map {
                path,
                key: Some(key),
            }) if path.is_empty() => key.clone(),
            Some(Frame::Map {
                path,
                key: Some(key),
            }) => format!("{path}.{key}"),
            Some(Frame::Map { path, key: None }) => path.clone(),
            Some(Frame::Seq { path, index }) => format!("{path}[{index}]"),
            None => String::new(),
        }
    }

    /// A value node finished: the parent moves on.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }

    /// Keeps the earliest position seen for `path`: a block mapping inside a
    /// sequence item is reported after its first key, which starts earlier.
    fn record(&mut self, path: String, mark: Marker) {
        let position = (mark.line(), mark.col() + 1);
        let slot = self.positions.entry(path).or_insert(position);
        *slot = (*slot).min(position);
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::MappingStart(..) => {
                let path = self.node_path();
                self.record(path.clone(), mark);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.node_path();
                self.record(path.clone(), mark);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map {
                    path: map_path,
                    key: key @ None,
                }) = self.stack.last_mut()
                {
                    *key = Some(value);
                    let map_path = map_path.clone();
                    self.record(map_path, mark);
                    let path = self.node_path();
                    self.record(path, mark);
                } else {
                    let path = self.node_path();
                    self.record(path, mark);
                    self.value_done();
                }
            }
            Event::Alias(..) => {
                let path = self.node_path();
                self.record(path, mark);
                self.value_done();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_items() {
        let text = "a:\n  b: [1, 2]\n  c:\n    - x: 1\n      y: 2\n";
        let at = Locations::index(text);
        assert_eq!(at.of("a"), (1, 1));
        assert_eq!(at.of("a.b"), (2, 3));
        assert_eq!(at.of("a.b[1]"), (2, 10));
        assert_eq!(at.of("a.c[0].y"), (5, 7));
        assert_eq!(at.of("a.c[0].missing"), (4, 7));
        assert_eq!(at.of("nowhere"), (1, 1));
    }
}
