//! Reading a histogram back from a Prometheus `/metrics` page, for benchmarks that
//! report what the server measured about itself.

/// One histogram series (a metric name and one set of labels).
#[derive(Debug, PartialEq)]
pub struct Histogram {
    /// (upper bound in seconds, cumulative count), in the page's order (ascending).
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// The series of `name` whose labels, without `le`, are exactly `labels` as the page
    /// prints them (`a="x",b="y"`; empty for none). `None` when the page lacks it.
    pub fn parse(page: &str, name: &str, labels: &str) -> Option<Self> {
        let bucket_prefix = if labels.is_empty() {
            format!("{name}_bucket{{le=\"")
        } else {
            format!("{name}_bucket{{{labels},le=\"")
        };
        let series = |suffix: &str| {
            if labels.is_empty() {
                format!("{name}_{suffix} ")
            } else {
                format!("{name}_{suffix}{{{labels}}} ")
            }
        };
        let (sum_prefix, count_prefix) = (series("sum"), series("count"));
        let value = |line: &str| line.rsplit(' ').next()?.parse::<f64>().ok();
        let mut histogram = Self {
            buckets: Vec::new(),
            sum: 0.0,
            count: 0.0,
        };
        let mut found = false;
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix(&bucket_prefix) {
                let bound = match rest.split('"').next()? {
                    "+Inf" => f64::INFINITY,
                    bound => bound.parse().ok()?,
                };
                histogram.buckets.push((bound, value(line)?));
            } else if line.starts_with(&sum_prefix) {
                histogram.sum = value(line)?;
                found = true;
            } else if line.starts_with(&count_prefix) {
                histogram.count = value(line)?;
            }
        }
        found.then_some(histogram)
    }

    /// Mean of the observations, in seconds.
    pub fn mean(&self) -> f64 {
        self.sum / self.count.max(1.0)
    }

    /// Upper bound, in seconds, of the bucket that holds quantile `q` (∞ when it is in
    /// the last bucket).
    pub fn bound(&self, q: f64) -> f64 {
        let wanted = q * self.count;
        self.buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= wanted)
            .map_or(f64::INFINITY, |(bound, _)| *bound)
    }
}

/// The sum of every series of the gauge or counter `name` on the page (all label sets);
/// 0 when the page has none.
pub fn gauge_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The sum of the series of gauge `name` whose labels include `label` (`key="value"`).
pub fn gauge_sum_labelled(page: &str, name: &str, label: &str) -> f64 {
    page.lines()
        .filter_map(|line| {
            let labels = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = labels.rsplit_once("} ")?;
            labels
                .split(',')
                .any(|pair| pair == label)
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP d delay
# TYPE d histogram
d_bucket{projector="a",stage="x",le="0.01"} 1
d_bucket{projector="a",stage="x",le="0.1"} 9
d_bucket{projector="a",stage="x",le="+Inf"} 10
d_sum{projector="a",stage="x"} 0.5
d_count{projector="a",stage="x"} 10
d_bucket{projector="b",stage="x",le="0.01"} 4
d_bucket{projector="b",stage="x",le="+Inf"} 4
d_sum{projector="b",stage="x"} 0.02
d_count{projector="b",stage="x"} 4
plain_bucket{le="1"} 2
plain_bucket{le="+Inf"} 3
plain_sum 4.5
plain_count 3
"#;

    #[test]
    fn reads_one_labelled_series_and_no_other() {
        let a = Histogram::parse(PAGE, "d", r#"projector="a",stage="x""#).unwrap();
        assert_eq!(
            a.buckets,
            vec![(0.01, 1.0), (0.1, 9.0), (f64::INFINITY, 10.0)]
        );
        assert_eq!((a.sum, a.count), (0.5, 10.0));
        assert!((a.mean() - 0.05).abs() < 1e-12);
        assert_eq!(a.bound(0.1), 0.01);
        assert_eq!(a.bound(0.5), 0.1);
        assert_eq!(a.bound(0.99), f64::INFINITY);
    }

    #[test]
    fn reads_an_unlabelled_series() {
        let plain = Histogram::parse(PAGE, "plain", "").unwrap();
        assert_eq!((plain.sum, plain.count, plain.buckets.len()), (4.5, 3.0, 2));
        assert_eq!(plain.bound(0.5), 1.0);
    }

    #[test]
    fn a_missing_series_is_none() {
        assert_eq!(
            Histogram::parse(PAGE, "d", r#"projector="c",stage="x""#),
            None
        );
        assert_eq!(Histogram::parse(PAGE, "nothing", ""), None);
    }

    #[test]
    fn a_gauge_sums_over_its_label_sets_and_nothing_else() {
        let page =
            "# HELP g a gauge\n# TYPE g gauge\ng{p=\"0\"} 3\ng{p=\"1\"} 4\ngauge_other 100\ng 1\n";
        assert_eq!(gauge_sum(page, "g"), 8.0);
        assert_eq!(gauge_sum(page, "missing"), 0.0);
    }

    #[test]
    fn a_labelled_gauge_sums_only_the_series_with_that_label() {
        let page = "g{projector=\"a\",p=\"0\"} 3\ng{projector=\"b\",p=\"0\"} 4\ng{projector=\"a\",p=\"1\"} 5\ngx{projector=\"a\"} 9\n";
        assert_eq!(gauge_sum_labelled(page, "g", "projector=\"a\""), 8.0);
        assert_eq!(gauge_sum_labelled(page, "g", "p=\"0\""), 7.0);
        assert_eq!(gauge_sum_labelled(page, "g", "projector=\"c\""), 0.0);
    }
}
