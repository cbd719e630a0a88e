//! Enums stored as words: a status in a read-model column, a flow's outcome.

/// Declares a fieldless enum whose variants are written as fixed words, with `as_str`,
/// `parse` (the inverse; `None` for any other word), `ALL` and `Display`. The words are
/// what the tables store and what their CHECK constraints list, so a variant is named
/// once, next to its word. Derives are the caller's.
#[macro_export]
macro_rules! worded {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $word:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$variant_meta])* $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The word this variant is stored and shown as.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word),+
                }
            }

            /// The variant `as_str` writes as `text`.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($word => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// The words a CHECK constraint named `constraint` in `sql` allows (`CHECK (x IN ('a',
/// 'b'))`), for tests that hold an enum and its table to the same list.
pub fn checked_words(sql: &str, constraint: &str) -> Vec<String> {
    let name = format!("CONSTRAINT {constraint}");
    let Some(rest) = sql
        .match_indices(&name)
        .map(|(start, _)| &sql[start + name.len()..])
        .find(|rest| rest.starts_with(char::is_whitespace))
    else {
        return Vec::new();
    };
    let Some(open) = rest.find("IN (") else {
        return Vec::new();
    };
    let list = &rest[open + 4..];
    let list = &list[..list.find(')').unwrap_or(list.len())];
    list.split(',')
        .map(|word| word.trim().trim_matches('\'').to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    worded! {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum Light {
            Red = "red",
            Green = "green",
        }
    }

    #[test]
    fn each_variant_reads_back_from_its_word_and_nothing_else_does() {
        for light in Light::ALL {
            assert_eq!(Light::parse(light.as_str()), Some(*light));
            assert_eq!(light.to_string(), light.as_str());
        }
        assert_eq!(Light::parse("Red"), None);
        assert_eq!(Light::parse(""), None);
    }

    #[test]
    fn a_checks_words_are_read_from_its_constraint() {
        let sql = "ALTER TABLE t ADD CONSTRAINT a_words CHECK (x IN ('one', 'two')),\n\
                   ADD CONSTRAINT b_words\n CHECK (y IN ('three'));";
        assert_eq!(super::checked_words(sql, "a_words"), ["one", "two"]);
        assert_eq!(super::checked_words(sql, "b_words"), ["three"]);
        assert!(super::checked_words(sql, "c_words").is_empty());
    }
}
