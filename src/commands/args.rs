//! The one place command arguments are parsed: a cursor over a request's
//! arguments (the command name excluded).

use bytes::Bytes;

use super::CommandError;
use crate::protocol::parse_i64;

pub struct Args<'a> {
    args: &'a [Bytes],
    position: usize,
}

impl<'a> Args<'a> {
    pub fn new(args: &'a [Bytes]) -> Self {
        Self { args, position: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.position >= self.args.len()
    }

    pub fn remaining(&self) -> usize {
        self.args.len().saturating_sub(self.position)
    }

    /// The rest of the arguments, consumed.
    pub fn rest(&mut self) -> &'a [Bytes] {
        let rest = &self.args[self.position.min(self.args.len())..];
        self.position = self.args.len();
        rest
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<&'a Bytes> {
        let arg = self.args.get(self.position)?;
        self.position += 1;
        Some(arg)
    }

    /// The next argument; a missing one is a syntax error.
    pub fn required(&mut self) -> Result<&'a Bytes, CommandError> {
        self.next().ok_or(CommandError::Syntax)
    }

    /// The next argument as an integer, worded as Redis words a bad one.
    pub fn integer(&mut self) -> Result<i64, CommandError> {
        parse_i64(self.required()?).ok_or(CommandError::NotInteger)
    }

    /// The next argument, for matching against keywords (ignoring ASCII
    /// case; anything else simply matches no keyword).
    pub fn keyword(&mut self) -> Option<Keyword<'a>> {
        self.next().map(|arg| Keyword::of(arg))
    }

    /// An optional trailing flag (`JSON`, `LOCAL`, `WITHSESSIONS`): true when
    /// it is there; anything else, or anything after it, is a syntax error.
    pub fn trailing_flag(&mut self, flag: &str) -> Result<bool, CommandError> {
        let present = match self.keyword() {
            None => false,
            Some(keyword) if keyword.is(flag) => true,
            Some(_) => return Err(CommandError::Syntax),
        };
        self.finish()?;
        Ok(present)
    }

    /// Fails with a syntax error unless every argument was consumed.
    pub fn finish(&self) -> Result<(), CommandError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(CommandError::Syntax)
        }
    }
}

/// An argument compared with keywords (upper-case ASCII) ignoring ASCII
/// case, without allocating or copying.
pub struct Keyword<'a>(&'a [u8]);

impl<'a> Keyword<'a> {
    pub fn of(arg: &'a [u8]) -> Keyword<'a> {
        Keyword(arg)
    }

    pub fn is(&self, keyword: &str) -> bool {
        self.0.eq_ignore_ascii_case(keyword.as_bytes())
    }
}
