//! The merged sample file: a classic PCAP written on a blocking thread into the scratch
//! directory, fsynced, then put into the object store.

use edgecap_merge::write_classic_pcap;

use super::SampleCaptures;
use super::fanout::Tagged;

impl SampleCaptures {
    /// The key a sample capture's file is stored under.
    pub(super) fn file_key(account: &str, id: &str) -> String {
        format!("accounts/{account}/pcaps/{id}.pcap")
    }

    pub(super) async fn store_pcap(
        &self,
        key: &str,
        linktype: u32,
        snaplen: u32,
        merged: Vec<Tagged>,
    ) -> Result<(), String> {
        let tmp = self.tmp_dir.join(format!("{}.pcap.tmp", crate::model::new_id()));
        let path = tmp.clone();
        let written = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let out = std::io::BufWriter::new(file);
            let (out, _) = write_classic_pcap(
                out,
                linktype,
                snaplen,
                merged.iter().map(|t| (t.packet.ts_ns, t.packet.orig_len, &t.packet.data[..])),
            )
            .map_err(|e| e.to_string())?;
            let file = out.into_inner().map_err(|e| e.to_string())?;
            file.sync_all().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let result = match written {
            Ok(()) => {
                self.objects.put_file(key, &tmp, &self.tasks.token()).await.map(|_| ()).map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&tmp).await;
        result
    }
}
